"""Matrix x small-matrix kernels (`lmforge.kernels`) against torch at the same precision, M = 1 and 8, CPU.

    .venv/bin/python bench/kernels.py                      # every op x SmolLM2-135M shape x M in (1, 8), ~2 min
    .venv/bin/python bench/kernels.py --quick              # 3 shapes, M = 1, fewer pairs (< 30 s)
    .venv/bin/python bench/kernels.py --ops f32 int8 --m 1 2 4 8 --isa avx2
    .venv/bin/python bench/kernels.py --prefill            # M = 8..512 on 576x1536: where torch takes over
    .venv/bin/python bench/kernels.py --threads 1          # (compare with the default 2: the second thread helps)

Decoding reads every weight once per token, so a kernel is judged by the bytes of weights it reads per
second against the machine's read bandwidth (measured in this run: `x.sum()` over a 1 GiB float32 tensor,
best of 5). Each call reads a different copy of the weights, cycling through `--pool-mb` (512) of copies,
more than the last-level cache, so the weights come from memory as in a real decode and not from a cache
that holds one small matrix. A timed sample is one call on each of the next copies (all of them, or fewer
when the slower side would take over 40 ms).

Columns: µs per call (median [min–max] over interleaved pairs), GB/s of weights read, its % of the read
bandwidth, torch's µs, and the median per-pair ratio torch time / lmforge time (> 1: lmforge is faster).
torch is `F.linear` in f32; bf16 x bf16 `F.linear` for the bf16 rows; `torch._weight_int8pack_mm` (same
arithmetic: f32 x, int8 weights, per-row scale) for int8. Rows are `CASES` entries: a name, how to make
the weights from an f32 matrix, lmforge's call, torch's call. One JSON line per row goes to
`bench/results/kernels.jsonl`. Never gates a test.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import common
import torch
import torch.nn.functional as F

import lmforge.kernels as kernels

# SmolLM2-135M's matrices (N x K): q/o, k/v, gate/up, down, the LM head, the fused qkv and gate+up.
SHAPES = {"q/o": (576, 576), "k/v": (192, 576), "up": (1536, 576), "down": (576, 1536), "lm_head": (49152, 576),
          "qkv": (960, 576), "gate+up": (3072, 576)}
QUICK_SHAPES = ("q/o", "down", "lm_head")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: w ~ q * scale, q in [-127, 127]."""
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale.to(torch.float32)


@dataclass
class Case:
    """One benchmarked op: weights from an f32 (N, K) matrix, lmforge's call and torch's, on x (M, K) f32."""

    name: str
    prepare: Callable[[torch.Tensor], tuple]  # w (N, K) f32 -> the op's weight arguments
    ours: Callable[..., torch.Tensor]  # ours(x, *weights)
    torch_ref: Callable[..., torch.Tensor]  # torch_ref(x, *weights): the same product in torch
    torch_name: str


def _int8pack(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    if hasattr(torch, "_weight_int8pack_mm"):
        return torch._weight_int8pack_mm(x, w, scale)
    return F.linear(x, w.to(torch.float32)) * scale


CASES = {
    "f32": Case("f32", lambda w: (w,), kernels.linear_f32, F.linear, "F.linear f32"),
    "bf16": Case("bf16", lambda w: (w.to(torch.bfloat16),), kernels.linear_bf16,
                 lambda x, w: F.linear(x.to(torch.bfloat16), w), "F.linear bf16"),
    "bf16-dot": Case("bf16-dot", lambda w: (w.to(torch.bfloat16),),
                     lambda x, w: kernels.linear_bf16(x, w, exact=False),
                     lambda x, w: F.linear(x.to(torch.bfloat16), w), "F.linear bf16"),
    "int8": Case("int8", quantize_int8, kernels.linear_int8, _int8pack,
                 "_weight_int8pack_mm" if hasattr(torch, "_weight_int8pack_mm") else "dequant+F.linear"),
}


def read_bandwidth(gib: float = 1.0, rounds: int = 5) -> float:
    """Bytes/s of `x.sum()` over a `gib` GiB float32 tensor, best of `rounds`."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    best = min(common._timed(x.sum) for _ in range(rounds))
    return x.nbytes / best


def weight_bytes(weights: tuple) -> int:
    return sum(t.nbytes for t in weights if isinstance(t, torch.Tensor))


def make_pool(case: Case, n: int, k: int, pool_bytes: int) -> list[tuple]:
    """Copies of one random weight matrix in the case's format, `pool_bytes` in all (at least 2 copies)."""
    first = case.prepare(torch.randn(n, k) / k**0.5)
    copies = max(2, -(-pool_bytes // weight_bytes(first)))
    return [first] + [tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in first) for _ in range(copies - 1)]


class Sweep:
    """Calls `fn` on the next `calls` weight copies of the pool, cycling: no copy is reused before all were read."""

    def __init__(self, fn: Callable[..., torch.Tensor], x: torch.Tensor, pool: list[tuple], calls: int):
        self.fn, self.x, self.pool, self.calls, self.next = fn, x, pool, calls, 0

    def __call__(self) -> None:
        for _ in range(self.calls):
            self.fn(self.x, *self.pool[self.next])
            self.next = (self.next + 1) % len(self.pool)


def bench_row(case: Case, shape_name: str, m: int, pool: list[tuple], bandwidth: float, args) -> dict:
    n, k = pool[0][0].shape[0], SHAPES[shape_name][1]
    x = torch.randn(m, k)
    ours, ref = case.ours(x, *pool[0]), case.torch_ref(x, *pool[0]).float()
    err = ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    # Calls per timed sample: the whole pool, or fewer when the slower side would take over ~40 ms.
    slowest = max(common._timed(lambda: case.ours(x, *pool[1])), common._timed(lambda: case.torch_ref(x, *pool[1])))
    calls = max(2, min(len(pool), int(0.04 / max(slowest, 1e-7))))
    repeats = args.repeats or (3 if args.quick else 7)
    result = common.interleave(Sweep(case.ours, x, pool, calls), Sweep(case.torch_ref, x, pool, calls),
                               warmup=args.warmup or 1, repeats=repeats, budget_s=0.0 if args.quick else 0.5,
                               max_repeats=15)
    us_ours = common.Summary.of([t / calls * 1e6 for t in result.a])
    us_torch = common.Summary.of([t / calls * 1e6 for t in result.b])
    gbs = weight_bytes(pool[0]) / (us_ours.median * 1e-6) / 1e9
    return {"op": case.name, "shape": shape_name, "n": n, "k": k, "m": m, "isa": kernels.isa(),
            "us": us_ours.as_dict(), "torch_us": us_torch.as_dict(), "gb_s": gbs, "bw_share": gbs * 1e9 / bandwidth,
            "speedup": statistics.median(result.speedups), "pairs": len(result.a), "torch": case.torch_name,
            "calls_per_sample": calls, "rel_err_vs_torch": err}


def prefill_rows(args) -> list[list[str]]:
    """lmforge's kernels vs torch (the wrappers' large-M route) on 576x1536 for growing M."""
    n, k = SHAPES["down"]
    w = torch.randn(n, k) / k**0.5
    wb, (wq, scale) = w.to(torch.bfloat16), quantize_int8(w)
    ops = torch.ops.lmforge
    pairs = {"f32": (lambda x: ops.gemv_f32(x, w), lambda x: F.linear(x, w)),
             "bf16": (lambda x: ops.gemv_bf16(x, wb, True), lambda x: F.linear(x, wb.float())),
             "bf16-dot": (lambda x: ops.gemv_bf16(x, wb, False),
                          lambda x: F.linear(x.to(torch.bfloat16).float(), wb.float())),
             "int8": (lambda x: ops.gemv_int8(x, wq, scale), lambda x: F.linear(x, wq.float()) * scale)}
    rows = []
    for m in (8, 16, 32, 64, 128, 512):
        x = torch.randn(m, k)
        for name, (ours, ref) in pairs.items():
            r = common.interleave(lambda f=ours, x=x: f(x), lambda f=ref, x=x: f(x), warmup=2, repeats=args.repeats or 9)
            rows.append([name, m, f"{statistics.median(r.a) * 1e6:.0f}", f"{statistics.median(r.b) * 1e6:.0f}",
                         f"{statistics.median(r.speedups):.2f}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.RESULTS_DIR / "kernels.jsonl")
    parser.add_argument("--ops", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES))
    parser.add_argument("--m", nargs="+", type=int, default=None, help="rows of x (default 1 8; --quick: 1)")
    parser.add_argument("--isa", default="auto", help="cap the kernels' ISA: auto, scalar, avx2, avx512")
    parser.add_argument("--pool-mb", type=int, default=512, help="MB of weight copies each sweep reads")
    parser.add_argument("--prefill", action="store_true", help="only the large-M table (576x1536)")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    if kernels.backend() != "cpp":
        print(f"lmforge.kernels runs its PyTorch reference (build failed: {kernels.build_error()})", file=sys.stderr)
    kernels.set_isa(args.isa)
    info = common.machine_info()
    lines = common.header_lines(info, "lmforge.kernels vs torch: matrix x small-matrix products")
    if args.prefill:
        print("\n".join(lines + ["", f"- kernels: {kernels.backend()} / {kernels.isa()}", ""]))
        print(common.markdown_table(["op", "M", "lmforge µs", "torch µs", "torch / lmforge"], prefill_rows(args)))
        return 0
    bandwidth = read_bandwidth()
    lines += [f"- kernels: {kernels.backend()} / {kernels.isa()} (bf16 dot products: {kernels.uses_bf16()}); "
              f"read bandwidth {bandwidth / 1e9:.1f} GB/s (1 GiB x.sum(), best of 5); weights cycle through "
              f"{args.pool_mb} MB of copies", ""]
    print("\n".join(lines), flush=True)
    shapes = args.shapes or (list(QUICK_SHAPES) if args.quick else list(SHAPES))
    ms = args.m or ([1] if args.quick else [1, 8])
    headers = ["op", "shape", "N×K", "M", "lmforge µs", "GB/s", "% bw", "torch µs", "torch / lmforge", "torch op"]
    rows, records, run = [], [], common.run_id()
    start = time.perf_counter()
    for op in args.ops:
        case = CASES[op]
        for shape_name in shapes:
            n, k = SHAPES[shape_name]
            pool = make_pool(case, n, k, args.pool_mb * 2**20)
            for m in ms:
                rec = bench_row(case, shape_name, m, pool, bandwidth, args)
                records.append({"run": run, **info, "threads": args.threads, "bandwidth": bandwidth, **rec})
                rows.append([op, shape_name, f"{n}×{k}", m, common.Summary(**rec["us"]).fmt(".1f"),
                             f"{rec['gb_s']:.1f}", f"{rec['bw_share']:.0%}", f"{rec['torch_us']['median']:.1f}",
                             f"{rec['speedup']:.2f}", case.torch_name])
                print(f"  {op} {shape_name} M={m}: {rec['gb_s']:.1f} GB/s, {rec['speedup']:.2f}x torch", flush=True)
            del pool
    print()
    print(common.markdown_table(headers, rows))
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s")
    if not args.no_out:
        common.append_jsonl(args.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
