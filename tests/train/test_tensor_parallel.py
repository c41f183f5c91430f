"""Tensor parallelism (`torch.distributed.tensor.parallel`) and FSDP x TP through torchrun on gloo: the same
losses as one process, and checkpoints that resume on another process count."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tiny import TINY_MODEL

from lmforge.models import get_preset
from lmforge.models.config import ConfigError
from lmforge.train.config import TrainConfig
from lmforge.train.metrics import read_metrics

STEPS = 6
# fp32 throughout; TP sums the partial products of o/down and the vocabulary shards in another order than
# one process does, so losses agree to rounding, not bit for bit (measured: <= 1e-6 over 6 steps).
TOL = 1e-5
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
PRETRAIN = ["-m", "lmforge.cli", "pretrain"]


def _config(tiny_data, run: Path, preset: str, strategy: str, tp_size: int | None = None) -> Path:
    data, tok = tiny_data
    shape = TINY_MODEL if preset == "llama-tiny" else {**TINY_MODEL, "n_kv_heads": 4}  # GPT-2: no GQA
    cfg = {
        "data": {"path": str(data), "tokenizer": str(tok)},
        "model": {"preset": preset, "overrides": shape},
        "train": {"steps": STEPS, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "warmup_steps": 2, "eval_every": 3,
                  "eval_batches": 4, "checkpoint_every": 3, "keep_last": 0, "log_every": 1, "progress": False,
                  "sample_prompts": [], "distributed": strategy, "tp_size": tp_size, "precision": "fp32"},
        "out_dir": str(run),
    }
    path = run.parent / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pretrain(config: Path, processes: int, *extra: str) -> None:
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes),
                   "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    out = subprocess.run([*launch, *PRETRAIN, "--config", str(config), *extra], env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


def _records(run: Path) -> dict[int, dict]:
    """The last record of each step (a resumed run appends)."""
    merged: dict[int, dict] = {}
    for r in read_metrics(run / "metrics.jsonl"):
        merged.setdefault(r["step"], {}).update(r)
    return merged


def _assert_same_run(a: dict[int, dict], b: dict[int, dict], steps) -> None:
    for step in steps:
        assert abs(a[step]["loss"] - b[step]["loss"]) <= TOL, (step, a[step]["loss"], b[step]["loss"])
    assert abs(a[STEPS]["val_loss"] - b[STEPS]["val_loss"]) <= TOL, (a[STEPS]["val_loss"], b[STEPS]["val_loss"])
    assert a[STEPS]["val_tokens"] == b[STEPS]["val_tokens"]  # every validation token counted once


def _interrupted_at(run: Path, copy: Path, step: int) -> Path:
    """A copy of `run` as if it had stopped after `step`: later checkpoints and all metrics removed."""
    shutil.copytree(run, copy)
    for later in copy.glob("step-*"):
        if int(later.name.split("-")[1]) > step:
            shutil.rmtree(later)
    (copy / "metrics.jsonl").unlink()
    return copy


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """Runs trained once and shared: (preset, strategy) -> run folder."""
    root = tmp_path_factory.mktemp("tp")
    done: dict[tuple[str, str], Path] = {}

    def get(preset: str, strategy: str) -> Path:
        if (preset, strategy) not in done:
            run = root / f"{preset}-{strategy}"
            processes, tp_size = {"none": (1, None), "tp": (2, None), "fsdp-tp": (4, 2)}[strategy]
            _pretrain(_config(tiny_data, run, preset, strategy, tp_size), processes)
            done[preset, strategy] = run
        return done[preset, strategy]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])  # untied head, GQA, RoPE / tied head, biases
def test_tp_two_processes_equal_one(runs, preset):
    _assert_same_run(_records(runs(preset, "none")), _records(runs(preset, "tp")), range(1, STEPS + 1))


@pytest.mark.slow
def test_fsdp_tp_four_processes_equal_one(runs):
    """A (dp 2, tp 2) mesh: FSDP over two TP groups of two."""
    _assert_same_run(_records(runs("llama-tiny", "none")), _records(runs("llama-tiny", "fsdp-tp")),
                     range(1, STEPS + 1))


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "written_by", "resumed_by"),
                         [("llama-tiny", "tp", 1), ("llama-tiny", "none", 2), ("gpt2-tiny", "tp", 1)])
def test_checkpoint_resumes_on_another_process_count(runs, tiny_data, tmp_path, preset, written_by, resumed_by):
    """A TP checkpoint resumed by one process, and one process's checkpoint resumed under TP, continue the run."""
    run = _interrupted_at(runs(preset, written_by), tmp_path / "resumed", step=3)
    _pretrain(_config(tiny_data, run, preset, "tp"), resumed_by, "--resume", "true")
    resumed = _records(run)
    assert sorted(resumed) == [4, 5, 6]
    _assert_same_run(_records(runs(preset, "none")), resumed, range(4, STEPS + 1))


def test_tp_sizes_are_checked_against_the_processes_and_the_model():
    model = get_preset("llama-tiny", n_heads=6, n_kv_heads=3, d_ff=96)
    with pytest.raises(ConfigError) as err:
        TrainConfig(distributed="fsdp-tp", batch_size=6).validate(4, model)
    assert "needs train.tp_size" in str(err.value)
    with pytest.raises(ConfigError) as err:
        TrainConfig(distributed="fsdp-tp", tp_size=3, batch_size=6).validate(4, model)
    assert "train.tp_size=3 must divide the process count 4" in str(err.value)
    with pytest.raises(ConfigError) as err:
        TrainConfig(distributed="tp", tp_size=2, batch_size=6).validate(4, model)
    assert "must be null or the process count 4" in str(err.value)
    with pytest.raises(ConfigError) as err:
        TrainConfig(distributed="fsdp-tp", tp_size=2, batch_size=6).validate(4, model)
    assert "model.n_kv_heads=3" in str(err.value) and "model.n_heads" not in str(err.value)
    assert "batch_size" not in str(err.value)  # 6 splits over the 2 data-parallel groups


def test_a_batch_is_split_over_the_data_parallel_groups_only():
    model = get_preset("llama-tiny")
    TrainConfig(distributed="tp", batch_size=3).validate(2, model)  # every TP rank sees the whole batch
    with pytest.raises(ConfigError, match="over 2 data-parallel groups"):
        TrainConfig(distributed="fsdp-tp", tp_size=2, batch_size=3).validate(4, model)
    TrainConfig(distributed="fsdp-tp", tp_size=2, batch_size=3).validate(1, model)  # one process: no TP
