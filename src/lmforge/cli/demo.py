"""`lmforge demo`: show the library working end to end on what is available offline."""

from __future__ import annotations


def demo(minutes: float = 4.5, out_dir: str = "runs/demo", skip_minilm: bool = False,
         skip_pretrain: bool = False) -> None:
    """The tour: presets, the real MiniLM checkpoint, then the main job (tokenizer -> shards -> LLaMA vs KN).

    Args:
        minutes: training time budget of the tiny LLaMA.
        out_dir: where the demo writes its tokenizer, shards, run and report.
        skip_minilm: do not load the all-MiniLM-L6-v2 checkpoint (fetched by `make assets`).
        skip_pretrain: stop after the model tour.
    """
    from lmforge.recipes.demo import DemoConfig, run_demo, show_models

    show_models(skip_minilm)
    if not skip_pretrain:
        print("\nThe main job on the embedded default corpus (English + Chinese):")
        run_demo(DemoConfig(out_dir=out_dir, minutes=minutes))
