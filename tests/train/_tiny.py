"""The tiny model shape the trainer tests share (a module of its own: two conftest.py files cannot both be imported by name)."""

TINY_MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_ff": 128, "max_seq_len": 128}
