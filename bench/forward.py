"""Forward tokens/s of lmforge vs transformers on the same weights, batch and dtype (CPU).

    .venv/bin/python bench/forward.py            # full run, a few minutes on 2 cores
    .venv/bin/python bench/forward.py --quick    # smoke run
    .venv/bin/python bench/forward.py --models llama-tiny --dtypes fp32 --profile

For each preset the lmforge model is built with a fixed seed, written in the Hugging Face format
with `lmforge.interop.save_pretrained`, and the reference is loaded from that folder with
`transformers` (decoders: `AutoModelForCausalLM`, full logits, `use_cache=False`; encoders: the bare
`BertModel` without its pooler, `last_hidden_state`, since lmforge's `EncoderModel.forward` does not
run its pooler). Outputs are checked to match before anything is timed. Both sides then run under
`torch.inference_mode()`, interleaved in this process (see `common.interleave`), and the table gives
the median of the per-pair ratios with [min–max]. The benchmark never gates a test.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, replace

import common
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MODELS = ("llama-tiny", "gpt2-tiny", "bert-tiny")
FP32_TOL = 1e-4  # max abs difference allowed in fp32
BF16_REL_TOL = 5e-2  # bf16: max abs difference / max abs reference output


@dataclass
class Plan:
    """Shape and repeats of the rows of one dtype."""

    batch: int
    seq: int
    warmup: int
    repeats: int
    """Timed pairs at least; more while the row has used less than `budget_s` (at most `max_repeats`)."""
    budget_s: float = 0.0
    max_repeats: int = 0


def plans(args, native_bf16: bool) -> dict[str, Plan]:
    if args.quick:
        fp32 = Plan(batch=2, seq=128, warmup=1, repeats=3)
        bf16 = Plan(batch=1, seq=64, warmup=1, repeats=3)
    else:
        fp32 = Plan(batch=8, seq=256, warmup=2, repeats=7, budget_s=30.0, max_repeats=41)
        # Without AVX-512-BF16/AMX bf16 runs on slow fallback kernels (≈ 5-10x slower than fp32 here):
        # a smaller batch keeps the run to a few minutes. With native bf16 the rows use the fp32 shape.
        bf16 = (replace(fp32) if native_bf16
                else Plan(batch=2, seq=128, warmup=2, repeats=6, budget_s=12.0, max_repeats=41))
    out = {"fp32": fp32, "bf16": bf16}
    for plan in out.values():
        if args.batch:
            plan.batch = args.batch
        if args.seq:
            plan.seq = args.seq
        if args.warmup is not None:
            plan.warmup = args.warmup
        if args.repeats is not None:  # exactly this many pairs
            plan.repeats, plan.budget_s = args.repeats, 0.0
    return out


def build_pair(name: str, folder: str):
    """The lmforge model of preset `name` and the transformers model loaded from its HF export."""
    import transformers

    from lmforge.interop import save_pretrained
    from lmforge.models import build_model

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ours = build_model(name).eval()
    save_pretrained(ours, folder)
    common_kw = dict(dtype=torch.float32, attn_implementation="sdpa")
    if ours.cfg.family == "decoder":
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, **common_kw)
    elif ours.cfg.family == "encoder":
        theirs = transformers.AutoModel.from_pretrained(folder, add_pooling_layer=False, **common_kw)
    else:
        raise ValueError(f"{name}: only decoder and encoder presets are benchmarked here")
    return ours, theirs.eval()


def forward_fns(ours, theirs, ids: torch.Tensor):
    """Zero-argument callables that run the same forward on each side and return the compared tensor."""
    if ours.cfg.family == "decoder":
        def run_theirs():
            return theirs(input_ids=ids, use_cache=False).logits  # all positions, no KV cache

    else:
        def run_theirs():
            return theirs(input_ids=ids).last_hidden_state

    def run_ours():
        return ours(ids)

    return run_ours, run_theirs


def check(dtype: str, a: torch.Tensor, b: torch.Tensor) -> tuple[float, bool]:
    """Max abs difference of the two outputs, and whether it is within the tolerance of `dtype`."""
    diff = (a.float() - b.float()).abs().max().item()
    if dtype == "fp32":
        return diff, diff <= FP32_TOL
    scale = max(b.float().abs().max().item(), 1e-6)
    return diff, diff / scale <= BF16_REL_TOL


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.RESULTS_DIR / "forward.jsonl")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="presets to run")
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=None, help="override the batch of every row")
    parser.add_argument("--seq", type=int, default=None, help="override the sequence length of every row")
    parser.add_argument("--aa", action="store_true",
                        help="after each row, time lmforge against itself the same way: the noise floor")
    parser.add_argument("--profile", action="store_true",
                        help="also print torch.profiler op tables per row and the per-op difference")
    parser.add_argument("--profile-rows", type=int, default=15, help="rows of each profile table")
    parser.add_argument("--profile-calls", type=int, default=3, help="profiled calls per side")
    args = parser.parse_args(argv)

    common.pin_threads(args.threads)
    info = common.machine_info()
    run = common.run_id()
    plan = plans(args, info["native_bf16"])
    print("\n".join(common.header_lines(info, "Forward tokens/s: lmforge vs transformers")))
    print(f"- method: same weights (lmforge preset → save_pretrained → transformers), "
          f"`inference_mode`, eval; per row {plan['fp32'].warmup} warm-up pair(s), then interleaved "
          "pairs (A B, B A, …); tok/s = batch·seq / seconds per forward, median [min–max]; "
          "ratio = lmforge tok/s ÷ transformers tok/s per pair (> 1: lmforge faster)")
    print("- decoders: full (B, T, V) logits, transformers with `use_cache=False`; "
          "encoder: last hidden state, BertModel without its pooler", flush=True)

    table, records, failed = [], [], []
    for name in args.models:
        with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as folder:
            ours, theirs = build_pair(name, folder)
        for dtype in [d for d in DTYPES if d in args.dtypes]:  # fp32 first: the casts are in place
            p = plan[dtype]
            ours.to(DTYPES[dtype])
            theirs.to(DTYPES[dtype])
            gen = torch.Generator().manual_seed(1)
            ids = torch.randint(0, ours.cfg.vocab_size, (p.batch, p.seq), generator=gen)
            run_ours, run_theirs = forward_fns(ours, theirs, ids)
            with torch.inference_mode():
                diff, ok = check(dtype, run_ours(), run_theirs())
                if not ok:
                    failed.append(f"{name} {dtype}: outputs differ (max abs diff {diff:.3g}); not timed")
                    print(f"!! {failed[-1]}", file=sys.stderr, flush=True)
                    continue
                times = common.interleave(run_ours, run_theirs, warmup=p.warmup, repeats=p.repeats,
                                          budget_s=p.budget_s, max_repeats=p.max_repeats)
                if args.profile:
                    ops = common.profile_pair(run_ours, run_theirs, calls=args.profile_calls)
                    print(f"\n### profile: {name} {dtype} {p.batch}×{p.seq}, mean of {args.profile_calls} "
                          "interleaved calls per side\n")
                    print(common.profile_tables(*ops, rows=args.profile_rows), flush=True)
            tokens = p.batch * p.seq
            ours_rate, theirs_rate = times.rate("a", tokens), times.rate("b", tokens)
            ratio = common.Summary.of(times.speedups)
            p_value = common.sign_test(times.wins, len(times.a))
            note = "" if dtype == "fp32" or info["native_bf16"] else "no native bf16"
            table.append([name, dtype, f"{p.batch}×{p.seq}", len(times.a), ours_rate.fmt(), theirs_rate.fmt(),
                          ratio.fmt(".2f"), f"{times.wins}/{len(times.a)} (p={p_value:.2f})", f"{diff:.1e}", note])
            if args.aa:  # noise floor: lmforge against itself, same schedule
                aa = common.interleave(run_ours, run_ours, warmup=0, repeats=len(times.a))
                aa_ratio = common.Summary.of(aa.speedups)
                table.append([f"{name} (A/A)", dtype, f"{p.batch}×{p.seq}", len(aa.a), "", "", aa_ratio.fmt(".2f"),
                              f"{aa.wins}/{len(aa.a)}", "", "lmforge vs lmforge"])
            print(f"  done {name} {dtype}: ratio {ratio.fmt('.2f')}", file=sys.stderr, flush=True)
            records.append({
                "bench": "forward", "run": run, "model": name, "dtype": dtype, "batch": p.batch, "seq": p.seq,
                "tokens": tokens, "warmup": p.warmup, "repeats": len(times.a), "quick": args.quick,
                "params": ours.num_parameters(), "reference": type(theirs).__name__,
                "lmforge_tok_s": ours_rate.as_dict(), "transformers_tok_s": theirs_rate.as_dict(),
                "ratio": ratio.as_dict(), "ratios": times.speedups, "lmforge_wins": times.wins,
                "sign_test_p": p_value, "best_time_ratio": times.best_ratio, "max_abs_diff": diff, **info,
            })
        del ours, theirs

    print()
    print(common.markdown_table(
        ["model", "dtype", "B×T", "pairs", "lmforge tok/s", "transformers tok/s", "ratio lmforge/HF",
         "lmforge faster in", "max abs diff", "note"], table))
    below = [f"{r['model']} {r['dtype']}" for r in records if r["ratio"]["median"] < 1.0]
    slower = [f"{r['model']} {r['dtype']}" for r in records
              if r["ratio"]["median"] < 1.0 and r["sign_test_p"] < 0.05]
    print(f"\nrows with a median ratio < 1: {', '.join(below) or 'none'}; of these, lmforge slower in "
          f"significantly more pairs (sign test p < 0.05): {', '.join(slower) or 'none'}")
    if not args.no_out and records:
        path = common.append_jsonl(args.out, records)
        print(f"{len(records)} JSON lines (run {run}) appended to {path}")
    for message in failed:
        print(f"FAILED: {message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
