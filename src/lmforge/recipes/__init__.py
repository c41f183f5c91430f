"""Applications built on the library: each recipe is a readable job that uses the seams below it.

- `demo`: the tour of the model library and the main job (`lmforge demo`, `make demo`).
"""
