"""Metrics to `metrics.jsonl` and TensorBoard, and the machine's measured matmul peak for MFU."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import torch


class MetricsLogger:
    """Appends one JSON object per record to `metrics.jsonl`; mirrors scalars to TensorBoard if installed."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(run_dir / "tensorboard"))
                except ImportError:  # tensorboard is optional
                    self.tb = None

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    """The records of a `metrics.jsonl`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@functools.cache
def matmul_peak_flops(device: str = "cpu", precision: str = "fp32", size: int = 1024, repeats: int = 8) -> float:
    """Best FLOP/s of a square matmul in `precision` (fp32, bf16, fp16) on this device, measured once per process.

    MFU is reported against the peak of the dtype that runs: a bf16 run divided by the fp32 peak
    would read 2-3x too high on CPUs with native bf16.
    """
    dev = torch.device(device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    gen = torch.Generator(device=dev).manual_seed(0)  # never touch the global RNG (exact resume)
    a = torch.randn(size, size, device=dev, generator=gen).to(dtype)
    b = torch.randn(size, size, device=dev, generator=gen).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up (oneDNN builds its kernels then)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
