"""No lost work: a run folder that holds a run is never silently restarted; resume/overwrite say what happens."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tiny import TINY_MODEL

from lmforge.models.config import ConfigError
from lmforge.train import DataSpec, ModelSpec, TrainConfig, run_pretraining
from lmforge.train.metrics import read_metrics


def _cfg(steps: int = 2, **kw) -> TrainConfig:
    return TrainConfig(**{"steps": steps, "batch_size": 4, "seq_len": 16, "progress": False, "eval_every": 2,
                          "checkpoint_every": 2, "log_every": 1, "sample_prompts": [], "precision": "fp32", **kw})


def _run(tiny_data, run: Path, steps: int = 2, **kw) -> dict:
    data, tok = tiny_data
    return run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("llama-tiny", TINY_MODEL), "clm", _cfg(steps),
                           str(run), export=False, **kw)


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_second_run_in_the_same_folder_is_refused_and_changes_nothing(tiny_data, tmp_path):
    run = tmp_path / "run"
    _run(tiny_data, run)
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="already holds a run") as err:
        _run(tiny_data, run, steps=4)
    assert str(run) in str(err.value) and "--resume true" in str(err.value) and "--overwrite true" in str(err.value)
    assert _snapshot(run) == before


def test_overwrite_deletes_the_old_run_and_starts_from_step_zero(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    _run(tiny_data, run, steps=4)
    (run / "notes.txt").write_text("mine")  # not lmforge's: never deleted
    capsys.readouterr()
    _run(tiny_data, run, steps=2, overwrite=True)
    assert "--overwrite: deleting the previous run" in capsys.readouterr().out
    assert sorted(p.name for p in run.glob("step-*")) == ["step-0000002"]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2]
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_continues_the_run(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    _run(tiny_data, run, steps=2)
    capsys.readouterr()
    result = _run(tiny_data, run, steps=4, resume=True)
    assert "resumed from" in capsys.readouterr().out and result["step"] == 4
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_resume_on_an_empty_folder_says_it_starts_fresh(tiny_data, tmp_path, capsys):
    _run(tiny_data, tmp_path / "new", resume=True)
    assert f"nothing to resume in {tmp_path / 'new'}: starting from step 0" in capsys.readouterr().out


def test_a_foreign_folder_is_refused(tiny_data, tmp_path):
    run = tmp_path / "photos"
    run.mkdir()
    (run / "cat.jpg").write_bytes(b"\xff\xd8")
    for kw in ({}, {"resume": True}):
        with pytest.raises(ConfigError, match="holds no lmforge run.*cat.jpg"):
            _run(tiny_data, run, **kw)
    assert sorted(p.name for p in run.iterdir()) == ["cat.jpg"]
    with pytest.raises(ConfigError, match="exclude each other"):
        _run(tiny_data, tmp_path / "x", resume=True, overwrite=True)


def test_resume_with_another_objective_is_refused(tiny_data, tmp_path):
    data, tok = tiny_data
    run = tmp_path / "run"
    _run(tiny_data, run)
    with pytest.raises(ConfigError, match="started with objective 'clm', not 'mlm'"):
        run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("bert-tiny", TINY_MODEL), "mlm", _cfg(4), str(run),
                        resume=True, export=False)


def test_saved_config_holds_the_pretrain_arguments_and_resumes(tiny_data, tmp_path):
    """`lmforge pretrain --config RUN/config.yaml --resume true` continues the run (the saved file parses)."""
    run = tmp_path / "run"
    _run(tiny_data, run, steps=2)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert set(saved) == {"data", "model", "objective", "train", "out_dir", "device"}
    assert json.loads((run / "run.json").read_text())["model_config"]["n_layers"] == TINY_MODEL["n_layers"]
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "pretrain", "--config", str(run / "config.yaml"),
                          "--resume", "true", "--train.steps", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout and "done: step 3" in out.stdout
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
    # From the run folder alone: the rest of the arguments come from RUN/config.yaml.
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "pretrain", "--out_dir", str(run), "--resume", "true",
                          "--train.steps", "4"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout and "at step 3" in out.stdout and "done: step 4" in out.stdout
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


BAD = [
    ({"steps": 0}, "train.steps=0 must be a positive integer"),
    ({"steps": -5}, "train.steps=-5 must be a positive integer"),
    ({"batch_size": 0}, "train.batch_size=0 must be a positive integer"),
    ({"lr": -0.001}, "train.lr=-0.001 must be > 0"),
    ({"lr": 0.0}, "train.lr=0.0 must be > 0"),
    ({"batch_size": 6, "micro_batch_size": 4}, "train.micro_batch_size=4 does not divide the batch of 6"),
    ({"seq_len": 4096}, "train.seq_len=4096 exceeds the model's max_seq_len=128"),
    ({"warmup_steps": -1, "grad_clip": -1.0}, "train.warmup_steps=-1 must be >= 0; train.grad_clip=-1.0"),
]


@pytest.mark.parametrize("change, message", BAD)
def test_bad_training_settings_are_refused_before_anything_is_written(tiny_data, tmp_path, change, message):
    data, tok = tiny_data
    with pytest.raises(ConfigError) as err:
        run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("llama-tiny", TINY_MODEL), "clm",
                        _cfg(**{"steps": 2, **change}), str(tmp_path / "run"), export=False)
    assert message in str(err.value)
    assert not (tmp_path / "run").exists()


def test_all_problems_are_named_at_once():
    with pytest.raises(ConfigError) as err:
        TrainConfig(steps=0, lr=0.0, batch_size=8, micro_batch_size=3, eval_every=0).validate()
    for name in ("train.steps", "train.lr", "train.micro_batch_size", "train.eval_every"):
        assert name in str(err.value)


def test_cli_errors_are_one_line_without_traceback(tiny_data, tmp_path):
    data, tok = tiny_data
    base = [sys.executable, "-m", "lmforge.cli", "pretrain", "--data.path", str(data), "--data.tokenizer", str(tok),
            "--model.overrides", json.dumps(TINY_MODEL), "--out_dir", str(tmp_path / "run")]
    for extra, expected in ((["--train.batch_size", "0"], "train.batch_size=0"),
                            (["--objective", "mlmm"], "mlmm"),
                            (["--train.lr", "0"], "train.lr=0.0 must be > 0")):
        out = subprocess.run([*base, *extra], capture_output=True, text=True)
        assert out.returncode == 2, (extra, out.stderr[-2000:])
        assert expected in out.stderr and "Traceback" not in out.stderr, (extra, out.stderr)
    assert not (tmp_path / "run").exists()
