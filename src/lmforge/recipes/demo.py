"""The demo: a tour of the model library, then the main job on the embedded default corpus
(tokenizer -> shards -> tiny LLaMA vs Kneser-Ney).

Everything runs offline from the assets `make assets` fetched. Both perplexities are measured on
exactly the same validation targets: every token of the validation stream but the first.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lmforge.baselines import KneserNeyLM, split_documents
from lmforge.train.config import DataSpec, ModelSpec, TrainConfig

DEMO_MODEL = {"n_layers": 4, "d_model": 192, "n_heads": 4, "n_kv_heads": 2, "d_ff": 512, "max_seq_len": 256,
              "tie_embeddings": True, "dropout": 0.0}


@dataclass
class DemoConfig:
    """Settings of the demo job (defaults fit in 10 minutes on a 2-core CPU, set-up included)."""

    out_dir: str = "runs/demo"
    vocab_size: int = 4096
    minutes: float = 4.5
    """Training time budget."""
    seq_len: int = 128
    batch_size: int = 16
    lr: float = 3e-3
    precision: str = "auto"
    """Training precision; the step budget is calibrated in the same one."""
    model: dict = field(default_factory=lambda: dict(DEMO_MODEL))
    kn_orders: tuple[int, ...] = (2, 3, 4, 5)
    prompts: tuple[str, ...] = ("The Lord said", "今天")


def _stage(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)


def kneser_ney_perplexities(train_stream: np.ndarray, val_stream: np.ndarray, vocab_size: int, eos_id: int,
                            orders=(2, 3, 4, 5)) -> dict[int, float]:
    """KN perplexity per order on `val_stream[1:]`, the targets the neural model is scored on."""
    train_docs, val_docs = split_documents(train_stream, eos_id), split_documents(val_stream, eos_id)
    result = {}
    for order in orders:
        lm = KneserNeyLM().fit(train_docs, vocab_size, order)
        logp = lm.token_log_probs(val_docs)  # (val tokens,), in stream order
        result[order] = float(math.exp(-logp[1:].mean()))
    return result


def calibrate_steps(model, batch_size: int, seq_len: int, minutes: float, precision: str = "auto") -> int:
    """How many optimizer steps fit in `minutes`, from three timed steps on a copy of the model.

    The steps run in the precision training will use (`auto` resolved as the trainer resolves it), with
    the trainer's optimizer, so a bf16 run is not budgeted from fp32 timings.
    """
    import copy

    from lmforge.objectives import causal_lm_loss
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import autocast, resolve_precision

    device = torch.device("cpu")
    resolved = resolve_precision(precision, device)
    probe = copy.deepcopy(model).train()
    opt = build_optimizer(probe, 1e-4)
    gen = torch.Generator().manual_seed(0)  # the global RNG stays untouched
    ids = torch.randint(0, probe.cfg.vocab_size, (batch_size, seq_len + 1), generator=gen)
    times = []
    for _ in range(4):
        t = time.perf_counter()
        with autocast(resolved, device):
            loss = causal_lm_loss(probe(ids[:, :-1]), targets=ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(probe.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    per_step = sorted(times[1:])[1]  # median of 3; the run's time limit guards against a slower machine
    return max(20, int(minutes * 60 / per_step))


def run_demo(cfg: DemoConfig) -> dict:
    """Run the whole pipeline and print a report; returns the numbers."""
    from lmforge.data import TokenDataset, default_corpus_path
    from lmforge.data.shards import prepare
    from lmforge.models import CausalLM, get_preset
    from lmforge.tokenizers import Tokenizer, train_tokenizer
    from lmforge.train.pretrain import run_pretraining

    start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = default_corpus_path()
    docs = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    _stage(f"default corpus: {len(docs):,} documents, {corpus.stat().st_size / 1e6:.1f} MB ({corpus})", start)

    tok = train_tokenizer([corpus], kind="bpe", vocab_size=cfg.vocab_size, special_tokens="gpt", show_progress=False)
    tok.save(out / "tokenizer")
    tok = Tokenizer.from_pretrained(out / "tokenizer")
    _stage(f"byte-level BPE tokenizer trained: {tok.vocab_size:,} ids", start)

    manifest = prepare([corpus], out / "tokenizer", out / "data", overwrite=True, progress=False)
    train_ds, val_ds = TokenDataset(out / "data", "train", tok), TokenDataset(out / "data", "val", tok)
    _stage(f"prepared: train {train_ds.num_tokens:,} tokens, val {val_ds.num_tokens:,} tokens "
           f"({manifest['dtype']} shards)", start)

    kn = kneser_ney_perplexities(train_ds.array(), val_ds.array(), tok.vocab_size, tok.eos_id, cfg.kn_orders)
    best_order = min(kn, key=kn.get)
    _stage("Kneser-Ney (interpolated, modified) validation perplexity: "
           + ", ".join(f"{o}-gram {p:.1f}" for o, p in kn.items()), start)

    model_cfg = get_preset("llama-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **cfg.model)
    steps = calibrate_steps(CausalLM(model_cfg), cfg.batch_size, cfg.seq_len, cfg.minutes, cfg.precision)
    evals = 6
    train_cfg = TrainConfig(
        steps=steps, batch_size=cfg.batch_size, seq_len=cfg.seq_len, lr=cfg.lr, warmup_steps=max(10, steps // 50),
        eval_every=max(1, steps // evals), eval_batches=8, checkpoint_every=steps, log_every=max(1, steps // 50),
        time_limit=cfg.minutes * 1.1, sample_prompts=list(cfg.prompts), weight_decay=0.1, precision=cfg.precision,
    )
    _stage(f"pretraining a {model_cfg.n_layers}-layer LLaMA ({CausalLM(model_cfg).num_parameters():,} "
           f"parameters) for {steps} steps (~{cfg.minutes} min)", start)
    result = run_pretraining(DataSpec(str(out / "data"), str(out / "tokenizer")),
                             ModelSpec("llama-tiny", {**cfg.model, "vocab_size": tok.vocab_size}), "clm",
                             train_cfg, str(out / "run"), overwrite=True)
    from lmforge.train.metrics import read_metrics

    records = [r for r in read_metrics(out / "run" / "metrics.jsonl") if "val_ppl" in r]
    # Periodic evaluations cover the same first batches; the last one covers the whole split.
    curve = [(r["step"], r["val_ppl"]) for r in records if r["val_tokens"] == records[0]["val_tokens"]]
    model_ppl = result["val_ppl"]
    _stage(f"trained {result['step']} steps: validation perplexity {model_ppl:.1f}", start)

    hf_ok = _check_transformers_loads(out / "run" / "hf", val_ds)
    _stage(f"Hugging Face checkpoint written to {out / 'run' / 'hf'}; transformers loads it: {hf_ok}", start)

    report = {
        "validation_targets": int(val_ds.num_tokens - 1), "model_val_ppl": model_ppl,
        "kn_val_ppl": kn, "kn_best_order": best_order, "steps": result["step"], "curve_subset": curve,
        "samples": result.get("samples", {}), "seconds": round(time.perf_counter() - start, 1),
        "transformers_loads_checkpoint": hf_ok,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print("\n=== lmforge demo: validation perplexity on the same", f"{report['validation_targets']:,} tokens ===")
    print(f"  tiny LLaMA ({result['step']} steps, {cfg.minutes} min): {model_ppl:10.1f}")
    print(f"  Kneser-Ney {best_order}-gram (best of {list(kn)}): {kn[best_order]:10.1f}")
    print("  " + _verdict(curve, model_ppl, kn[best_order], cfg.minutes))
    print("Samples (temperature 0.8, top-k 40):")
    for prompt, sample in report["samples"].items():
        print(f"  {prompt!r} -> {sample!r}")
    print(f"Done in {report['seconds']:.0f} s. Report: {out / 'report.json'}")
    return report


def _verdict(curve: list[tuple[int, float]], model_ppl: float, kn_ppl: float, minutes: float) -> str:
    """Say plainly who wins, and extrapolate how long the model would need (log-ppl linear in log-steps)."""
    if model_ppl <= kn_ppl:
        return f"The model beats the n-gram by {100 * (1 - model_ppl / kn_ppl):.0f} %."
    pts = [(s, p) for s, p in curve if s > 0][-4:]
    if len(pts) >= 2:
        x = np.log([s for s, _ in pts])
        y = np.log([p for _, p in pts])
        slope, intercept = np.polyfit(x, y, 1)
        if slope < 0:
            need = math.exp((math.log(kn_ppl) - intercept) / slope) / pts[-1][0]
            return (f"The n-gram still wins ({kn_ppl:.0f} vs {model_ppl:.0f}). Extrapolating the last validation "
                    f"points (log-ppl linear in log-steps), the model would need about {need:.0f}x as many steps "
                    f"(~{need * minutes:.0f} min) to reach it, if the trend held; see docs/pretraining.md.")
    return f"The n-gram still wins ({kn_ppl:.0f} vs {model_ppl:.0f}); the curve is too short to extrapolate."


def _check_transformers_loads(folder: Path, val_ds) -> bool:
    """Load the exported folder with transformers and compare logits with lmforge's on real tokens."""
    try:
        import transformers
    except ImportError:
        return False
    from lmforge.interop import load_pretrained

    ids = torch.from_numpy(val_ds.tokens(0, 64).astype(np.int64))[None]
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ours = load_pretrained(folder)
    with torch.no_grad():
        return bool((hf(ids).logits - ours(ids)).abs().max() < 1e-4)


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
