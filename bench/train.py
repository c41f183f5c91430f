"""Training tokens/s and MFU of lmforge vs transformers: same config, weights, batch; AdamW step included.

    .venv/bin/python bench/train.py             # ~7M LLaMA, ~50M LLaMA, tiny BERT (fp32; bf16 if native)
    .venv/bin/python bench/train.py --quick     # smoke run
    .venv/bin/python bench/train.py --models llama-7m --profile

One training step = forward, loss, backward, gradient clipping at 1.0, AdamW step, zero_grad, as the
lmforge trainer does it (`lmforge.train`: its task loss and its AdamW, fused where the device
supports it). The reference is `LlamaForCausalLM` / `BertForMaskedLM` loaded from lmforge's own
Hugging Face export of the same model, stepping `torch.optim.AdamW(foreach=True)` on `model(...,
labels=...).loss`. Rows are interleaved A B A B in this process (shared/BENCHMARKING.md); the ratio is
the median of per-pair ratios. `lmforge+compile` is the same step with `torch.compile` on the model
(the trainer's `--train.compile true`). MFU = model FLOPs (6N + 12·L·d·T per token, N = every Linear
weight incl. the LM head) × tokens/s ÷ the GEMM peak of the row's dtype measured here (best of
torch.mm and F.linear at 2048², median of 5).
"""

from __future__ import annotations

import copy
import sys
import tempfile

import common
import torch
import torch.nn.functional as F

TARGETS = {"llama-50m": 1.25, "llama-7m": 1.10, "bert-tiny": 1.10}


def build(row: common.Row, folder: str, dtype: torch.dtype):
    """lmforge model, its training-step closure pieces, and the transformers twin from its HF export."""
    import transformers

    from lmforge.interop import save_pretrained
    from lmforge.models import build_model, get_preset

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = get_preset(row.preset, **row.overrides)
    task = "masked-lm" if cfg.family == "encoder" else "causal-lm"
    ours = build_model(cfg, task=task)
    save_pretrained(ours, folder)
    cls = transformers.BertForMaskedLM if cfg.family == "encoder" else transformers.LlamaForCausalLM
    theirs = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return ours.to(dtype).train(), theirs.to(dtype).train(), cfg


def make_steps(row: common.Row, ours, theirs, cfg, compile_ours: bool):
    from lmforge.objectives import causal_lm_loss
    from lmforge.train.optim import build_optimizer

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (row.batch, row.seq + 1), generator=g)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    encoder = cfg.family == "encoder"
    labels = inputs.clone() if encoder else None
    if encoder:  # 15 % of positions predicted, the rest ignored, the same on both sides
        keep = torch.rand(inputs.shape, generator=g) < 0.15
        labels[~keep] = -100

    model = torch.compile(ours) if compile_ours else ours
    opt_a = build_optimizer(ours, 1e-4, 0.1, (0.9, 0.95))
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), foreach=True)

    def step_ours():
        if encoder:
            loss = F.cross_entropy(model(inputs).logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        else:
            loss = causal_lm_loss(model(inputs), targets=targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)

    def step_theirs():
        if encoder:
            loss = theirs(input_ids=inputs, labels=labels).loss
        else:
            loss = theirs(input_ids=inputs, labels=inputs).loss  # HF shifts inside
        loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        opt_b.step()
        opt_b.zero_grad(set_to_none=True)

    return step_ours, step_theirs


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.Path("bench/results/train.jsonl"))
    parser.add_argument("--models", nargs="+", default=list(common.TRAIN_ROWS), choices=list(common.TRAIN_ROWS))
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--profile", action="store_true", help="print op tables of both sides")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    info = common.machine_info()
    dtypes = ["fp32"] + (["bf16"] if info["native_bf16"] else [])
    peaks = {name: common.gemm_peak(torch.float32 if name == "fp32" else torch.bfloat16) for name in dtypes}
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    print("\n".join(common.header_lines(info, "Training step: lmforge vs transformers")))
    print("- GEMM peak measured here: " + ", ".join(f"{n} {p / 1e9:.0f} GFLOP/s" for n, p in peaks.items())
          + " (each row's MFU is against the peak of its own dtype); "
          + ("bf16 rows run too" if len(dtypes) > 1 else "no bf16 rows: this CPU has no native bf16 "
             "(bf16 training is 25-35x slower than fp32 there)"))
    print()
    table, records, rid = [], [], common.run_id()
    for name in args.models:
        row = common.TRAIN_ROWS[name]
        if args.quick:
            row = common.Row(row.name, row.preset, row.overrides, 2, min(row.seq, 128))
        for dtype_name in dtypes:
            dtype = torch.float32 if dtype_name == "fp32" else torch.bfloat16
            peak = peaks[dtype_name]
            with tempfile.TemporaryDirectory() as folder:
                ours, theirs, cfg = build(row, folder, dtype)
            variants = [("lmforge", False)] + ([] if args.no_compile else [("lmforge+compile", True)])
            tokens = row.batch * row.seq
            flops = ours.flops_per_token(row.seq, training=True) * tokens
            for label, compiled in variants:
                a, b = copy.deepcopy(ours), copy.deepcopy(theirs)
                step_a, step_b = make_steps(row, a, b, cfg, compiled)
                res = common.interleave(step_a, step_b, warmup=warmup + (2 if compiled else 0), repeats=repeats)
                ratio = common.Summary.of(res.speedups)
                tok_a, tok_b = res.rate("a", tokens), res.rate("b", tokens)
                target = TARGETS.get(name)
                table.append([f"{name} ({ours.num_parameters() / 1e6:.1f}M)", dtype_name, label,
                              f"{row.batch}×{row.seq}", tok_a.fmt(), tok_b.fmt(),
                              f"{flops / min(res.a) / peak:.0%} / {flops / min(res.b) / peak:.0%}",
                              f"**{ratio.fmt('.2f')}**", f"{res.wins}/{len(res.a)}",
                              f"≥ {target:.2f}" if target else ""])
                records.append({"run": rid, "bench": "train", "model": name, "dtype": dtype_name, "variant": label,
                                "batch": row.batch, "seq": row.seq, "params": ours.num_parameters(),
                                "tok_s_lmforge": tok_a.as_dict(), "tok_s_transformers": tok_b.as_dict(),
                                "ratio": ratio.as_dict(), "peak_flops": peak, **info})
                print(f"  done: {name} {dtype_name} {label}: ratio {ratio.fmt('.2f')}", file=sys.stderr, flush=True)
                if args.profile and not compiled:
                    print(common.profile_tables(*common.profile_pair(step_a, step_b)))
                del a, b
    print(common.markdown_table(
        ["model", "dtype", "lmforge variant", "batch×seq", "lmforge tok/s", "transformers tok/s",
         "MFU (best) lmforge / HF", "speed-up (median [min–max])", "lmforge wins", "target"], table))
    if not args.no_out:
        common.append_jsonl(args.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
