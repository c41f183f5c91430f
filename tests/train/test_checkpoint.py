"""A corrupt newest checkpoint: resume falls back to the previous intact one (exactly), and says which."""

from __future__ import annotations

import pytest
from _tiny import TINY_MODEL

from lmforge.interop import CheckpointError
from lmforge.train import DataSpec, ModelSpec, TrainConfig, run_pretraining
from lmforge.train.metrics import read_metrics


def _run(tiny_data, run, steps: int, resume: bool = False) -> dict:
    data, tok = tiny_data
    cfg = TrainConfig(steps=steps, batch_size=4, seq_len=16, progress=False, eval_every=100, checkpoint_every=2,
                      keep_last=3, log_every=1, sample_prompts=[], precision="fp32", warmup_steps=0,
                      schedule="constant")  # a schedule independent of `steps`: 4 + 2 steps = 6 steps
    return run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("llama-tiny", {**TINY_MODEL, "dropout": 0.1}),
                           "clm", cfg, str(run), resume=resume, export=False)


def _losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


@pytest.mark.parametrize("damage", ["delete trainer.pt", "truncate model", "empty state.json"])
def test_resume_falls_back_to_the_previous_intact_checkpoint(tiny_data, tmp_path, capsys, damage):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _run(tiny_data, whole, steps=6)
    _run(tiny_data, broken, steps=4)
    newest = broken / "step-0000004"
    if damage == "delete trainer.pt":
        (newest / "trainer.pt").unlink()
    elif damage == "truncate model":
        path = newest / "model" / "model.safetensors"
        path.write_bytes(path.read_bytes()[:100])
    else:
        (newest / "state.json").write_text("")
    capsys.readouterr()
    _run(tiny_data, broken, steps=6, resume=True)
    printed = capsys.readouterr().out
    assert f"checkpoint {newest} is unreadable, skipping it" in printed
    assert "resuming from step-0000002, the newest intact checkpoint (step-0000004 unreadable)" in printed
    expected, got = _losses(whole), _losses(broken)
    for step in (3, 4, 5, 6):  # replayed from step 2: the same losses as the run never interrupted
        assert got[step] == expected[step], step


def test_no_intact_checkpoint_is_a_clear_error(tiny_data, tmp_path):
    run = tmp_path / "run"
    _run(tiny_data, run, steps=4)
    for ckpt in run.glob("step-*"):
        (ckpt / "trainer.pt").unlink()
    with pytest.raises(CheckpointError, match="none of its 2 checkpoints can be read back.*--overwrite true"):
        _run(tiny_data, run, steps=6, resume=True)


def test_checkpoint_files_are_readable_by_others_under_the_umask(tiny_data, tmp_path):
    run = tmp_path / "run"
    _run(tiny_data, run, steps=2)
    for path in (run / "step-0000002").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o044 == 0o044, path  # umask 022 in tests: group and others may read
