"""Shared helpers for the benchmarks in `bench/`: machine facts, interleaved timing, tables, JSON lines.

The method is the one in shared/BENCHMARKING.md: pin the threads, warm up, then time lmforge and
the reference *interleaved* in one process and report the median of the per-pair ratios with
[min–max]. Import this module before `torch` so the thread variables take effect.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(DEFAULT_THREADS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402  (after the thread variables)
import torch.nn.functional as F  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"


# --------------------------------------------------------------------------------------------- machine


def cpu_flags() -> set[str]:
    """The CPU feature flags (the library's own detection, which picks the training dtype)."""
    from lmforge.train.precision import cpu_flags as library_flags

    return set(library_flags())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_native_bf16(flags: set[str] | None = None) -> bool:
    """True when the CPU computes bf16 natively (AVX-512-BF16 or AMX); otherwise bf16 is emulated and slow."""
    flags = cpu_flags() if flags is None else flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def pin_threads(n: int = DEFAULT_THREADS) -> None:
    """Use `n` intra-op threads (the variables for OpenMP/MKL are set on import, before torch)."""
    torch.set_num_threads(n)


def machine_info() -> dict:
    """The facts every table header and JSON line carries."""
    flags = cpu_flags()
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": has_native_bf16(flags),
        "isa": " ".join(sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))) or "?",
        "python": platform.python_version(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def header_lines(info: dict, title: str) -> list[str]:
    bf16 = ("native bf16 (AVX-512-BF16/AMX)" if info["native_bf16"]
            else "**no native bf16** (no avx512_bf16/amx_bf16 flag: bf16 runs on slow fallback kernels, "
                  "so bf16 rows run at a reduced size)")
    lines = [
        f"## {title}",
        "",
        f"- CPU: {info['cpu']} ({info['cores']} cores visible; ISA flags: {info['isa']}); {bf16}",
        f"- torch {info['torch']}, `torch.get_num_threads()` = {info['threads']}, "
        f"`get_cpu_capability()` = {info['cpu_capability']}"
        + (f"; transformers {info['transformers']}" if "transformers" in info else ""),
    ]
    try:
        load = os.getloadavg()
        lines.append(f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: "
                     "only the interleaved ratios are comparable between runs)")
    except OSError:
        pass
    return lines


# --------------------------------------------------------------------------------------------- models


@dataclass
class Row:
    """A benchmarked model: a preset with overrides, and the batch it trains on."""

    name: str
    preset: str
    overrides: dict
    batch: int
    seq: int


# The training benchmarks' models (bench/train.py, bench/precision.py): the same shapes in every table.
TRAIN_ROWS = {
    "llama-7m": Row("llama-7m", "llama-tiny", dict(vocab_size=8192, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4,
                                                   d_ff=688, max_seq_len=512, tie_embeddings=False), 8, 256),
    "llama-50m": Row("llama-50m", "llama-tiny", dict(vocab_size=32000, d_model=512, n_layers=8, n_heads=8,
                                                     n_kv_heads=8, d_ff=1376, max_seq_len=512, tie_embeddings=False),
                     4, 512),
    "bert-tiny": Row("bert-tiny", "bert-tiny", dict(pooler=False), 8, 256),
}


# --------------------------------------------------------------------------------------------- timing


def gemm_peak(dtype: torch.dtype = torch.float32, rounds: int = 3) -> float:
    """GEMM FLOP/s in `dtype`: best of torch.mm and F.linear at 2048², median of 5 each, best of `rounds` rounds.

    One round alone read 693-1770 GFLOP/s in bf16 on the shared Xeon (a neighbour's load, AMX warming
    up); a peak is what the machine can do, and noise only ever slows it, so the best round counts.
    """
    a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
    best = 0.0
    for _ in range(rounds):
        for fn in (lambda: torch.mm(a, b), lambda: F.linear(a, b)):
            fn()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            best = max(best, 2 * 2048**3 / sorted(times)[2])
    return best


@dataclass
class Summary:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.median(values), min(values), max(values))

    def fmt(self, spec: str = ".0f") -> str:
        return f"{self.median:{spec}} [{self.min:{spec}}–{self.max:{spec}}]"

    def as_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max}


@dataclass
class Interleaved:
    """Seconds per call of A (lmforge) and B (reference), one pair per repeat."""

    a: list[float] = field(default_factory=list)
    b: list[float] = field(default_factory=list)

    @property
    def speedups(self) -> list[float]:
        """Per-pair B time / A time: > 1 means A (lmforge) is faster."""
        return [tb / ta for ta, tb in zip(self.a, self.b)]

    @property
    def wins(self) -> int:
        """Pairs in which A (lmforge) was faster."""
        return sum(r > 1.0 for r in self.speedups)

    @property
    def best_ratio(self) -> float:
        """B's best time / A's best time: another view of the comparison (noise only adds time), but one
        that misleads when the load changes within a row and only one side met the quiet moment."""
        return min(self.b) / min(self.a)

    def rate(self, side: str, work: float) -> Summary:
        """`work` units per second (e.g. tokens/s) of side `a` or `b`."""
        return Summary.of([work / t for t in getattr(self, side)])


def sign_test(wins: int, n: int) -> float:
    """Two-sided sign-test p-value of `wins` of `n` pairs, if either side were as likely to win each pair.

    A median ratio below 1 with p ≥ 0.05 is not evidence that one side is slower: it is what two
    equally fast programs give on a noisy machine about as often as not.
    """
    if n == 0:
        return 1.0
    k = min(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(fn_a: Callable[[], object], fn_b: Callable[[], object], *, warmup: int = 2, repeats: int = 5,
               budget_s: float = 0.0, max_repeats: int | None = None) -> Interleaved:
    """Time `fn_a` and `fn_b` alternately in this process.

    Warm-up calls run A B alternately and are discarded. Each timed repeat is one A/B pair; the
    order inside a pair alternates (A B, B A, A B, ...) so neither side always runs right after the
    other. After `repeats` pairs, more pairs run while the timed calls have taken less than
    `budget_s` seconds in all (at most `max_repeats` pairs): cheap rows get more pairs, and so
    steadier medians, at no cost to the run time. The garbage collector is off while timing.
    """
    for _ in range(warmup):
        fn_a()
        fn_b()
    max_repeats = max(repeats, max_repeats or repeats)
    result = Interleaved()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        spent = 0.0
        while len(result.a) < repeats or (spent < budget_s and len(result.a) < max_repeats):
            if len(result.a) % 2 == 0:
                ta = _timed(fn_a)
                tb = _timed(fn_b)
            else:
                tb = _timed(fn_b)
                ta = _timed(fn_a)
            result.a.append(ta)
            result.b.append(tb)
            spent += ta + tb
    finally:
        if was_enabled:
            gc.enable()
    return result


def op_profile(fn: Callable[[], object]) -> dict[tuple[str, str], list[float]]:
    """Self CPU milliseconds and calls of each (op, input shapes) in one call of `fn` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return {(e.key, str(e.input_shapes)): [e.self_cpu_time_total / 1e3, e.count]
            for e in prof.key_averages(group_by_input_shape=True)}


def profile_pair(fn_a: Callable[[], object], fn_b: Callable[[], object], calls: int = 3) -> tuple[dict, dict]:
    """`op_profile` of A and B, interleaved over `calls` calls each, averaged per call."""
    totals: tuple[dict, dict] = ({}, {})
    for i in range(calls):
        order = ((0, fn_a), (1, fn_b)) if i % 2 == 0 else ((1, fn_b), (0, fn_a))
        for side, fn in order:
            for key, (ms, n) in op_profile(fn).items():
                acc = totals[side].setdefault(key, [0.0, 0])
                acc[0] += ms / calls
                acc[1] += n / calls
    return totals


def profile_tables(a: dict, b: dict, names: tuple[str, str] = ("lmforge", "transformers"),
                   rows: int = 15) -> str:
    """Markdown: each side's costliest (op, shapes), and the per-op-name difference A - B."""
    out = []
    for name, ops in zip(names, (a, b)):
        total = sum(ms for ms, _ in ops.values())
        top = sorted(ops.items(), key=lambda kv: -kv[1][0])[:rows]
        out += [f"{name}: {total:.1f} ms self CPU per call", "",
                markdown_table(["op", "input shapes", "ms/call", "calls", "share"],
                               [[k[0], k[1][:70], f"{ms:.2f}", f"{n:g}", f"{ms / total:.1%}"]
                                for k, (ms, n) in top]), ""]
    by_name: dict[str, list[float]] = {}
    for side, ops in enumerate((a, b)):
        for (op, _), (ms, n) in ops.items():
            acc = by_name.setdefault(op, [0.0, 0.0, 0.0, 0.0])
            acc[side] += ms
            acc[2 + side] += n
    diff = sorted(by_name.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:rows]
    out += [f"per op, {names[0]} − {names[1]} (ms per call; > 0: {names[0]} spends more)", "",
            markdown_table(["op", f"{names[0]} ms", f"{names[1]} ms", "diff ms", "calls"],
                           [[op, f"{x:.2f}", f"{y:.2f}", f"{x - y:+.2f}", f"{nx:g} / {ny:g}"]
                            for op, (x, y, nx, ny) in diff])]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- output


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def run_id() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def append_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> Path:
    """Append one JSON object per line (each carries its run id, so one run's rows can be picked out)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return path


def base_parser(description: str, default_out: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer repeats, smaller shapes")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="intra-op threads (default 2)")
    parser.add_argument("--warmup", type=int, default=None, help="discarded warm-up pairs per row")
    parser.add_argument("--repeats", type=int, default=None, help="timed interleaved pairs per row")
    parser.add_argument("--out", type=Path, default=default_out, help="JSON lines file to append rows to")
    parser.add_argument("--no-out", action="store_true", help="do not write JSON lines")
    return parser
