"""`lmforge demo`: show the library working end to end on what is available offline."""

from __future__ import annotations

import time


def demo(minutes: float = 4.5, out_dir: str = "runs/demo", skip_minilm: bool = False,
         skip_pretrain: bool = False) -> None:
    """The tour: presets, the real MiniLM checkpoint, then the main job (tokenizer -> shards -> LLaMA vs KN).

    Args:
        minutes: training time budget of the tiny LLaMA.
        out_dir: where the demo writes its tokenizer, shards, run and report.
        skip_minilm: do not load the all-MiniLM-L6-v2 checkpoint (fetched by `make assets`).
        skip_pretrain: stop after the model tour.
    """
    show_models(skip_minilm)
    if not skip_pretrain:
        from lmforge.train.demo import DemoConfig, run_demo

        print("\nThe main job on the embedded default corpus (English + Chinese):")
        run_demo(DemoConfig(out_dir=out_dir, minutes=minutes))


def show_models(skip_minilm: bool = False) -> None:
    """Build every preset and print its size; embed sentences with the real MiniLM checkpoint."""
    import torch

    from lmforge.models import PRESETS, build_model

    torch.manual_seed(0)
    print("Presets (built on the meta device, so even llama-7b costs no memory):")
    print(f"  {'preset':18s} {'family':16s} {'parameters':>15s} {'GFLOP/token':>12s}")
    for name in PRESETS:
        with torch.device("meta"):
            model = build_model(name)
        print(f"  {name:18s} {model.cfg.family:16s} {model.num_parameters():>15,d} "
              f"{model.flops_per_token(512) / 1e9:>12.3f}")
    if skip_minilm:
        return
    from lmforge.interop import load_pretrained
    from lmforge.tokenizers import Tokenizer

    start = time.perf_counter()
    model = load_pretrained("all-minilm-l6-v2")
    from lmforge.assets import minilm_dir

    tok = Tokenizer.from_pretrained(minilm_dir())
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
        "今天天气真好。",
        "今天的天气很不错。",
    ]
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        emb = model.embed_sentences(batch["input_ids"], batch["attention_mask"])
    print(f"\nall-MiniLM-L6-v2 ({model.num_parameters():,} parameters, loaded and run in "
          f"{time.perf_counter() - start:.1f} s): cosine similarity of mean-pooled embeddings")
    sims = emb @ emb.T
    for i in range(len(sentences)):
        for j in range(i + 1, len(sentences)):
            print(f"  {float(sims[i, j]):+.3f}  {sentences[i]!r} ~ {sentences[j]!r}")
