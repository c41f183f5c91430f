"""A run killed with SIGKILL and resumed gives the same loss at every later step as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from _tiny import TINY_MODEL

pytestmark = pytest.mark.slow


def _config(data: Path, tok: Path, run: Path, steps: int) -> Path:
    cfg = {
        "data": {"path": str(data), "tokenizer": str(tok)},
        "model": {"preset": "llama-tiny", "overrides": {**TINY_MODEL, "dropout": 0.1}},  # dropout: RNG matters
        "train": {"steps": steps, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "warmup_steps": 5,
                  "eval_every": 1000, "checkpoint_every": 10, "keep_last": 2, "log_every": 1,
                  "progress": False, "sample_prompts": [], "precision": "fp32"},
        "out_dir": str(run),
    }
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lmforge.cli", "pretrain", "--config", str(config), *extra]


def _losses(run: Path) -> dict[int, float]:
    losses = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            losses[rec["step"]] = rec["loss"]  # a replayed step overwrites the killed run's record
    return losses


def test_sigkill_and_resume_is_exact(tiny_data, tmp_path):
    data, tok = tiny_data
    steps = 60
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole = tmp_path / "whole"
    subprocess.run(_cmd(_config(data, tok, whole, steps)), check=True, env=env, capture_output=True)

    broken = tmp_path / "broken"
    proc = subprocess.Popen(_cmd(_config(data, tok, broken, steps)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (broken / "step-0000020").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(_losses(broken))
    assert killed_at < steps, "the run finished before the kill"

    subprocess.run(_cmd(_config(data, tok, broken, steps), "--resume", "true"), check=True, env=env,
                   capture_output=True)
    expected, got = _losses(whole), _losses(broken)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(20, steps + 1):
        assert got[step] == expected[step], f"step {step}: {got[step]} != {expected[step]}"
    # No half-written checkpoint is ever taken for a complete one.
    assert all(not p.name.startswith(".") for p in broken.glob("step-*"))
