"""The run folder: what a run writes there, and the check that keeps a new run from overwriting an old one.

A run folder holds `config.yaml` (the arguments of the run, loadable with `--config`), `run.json`
(the resolved model config and machine facts), `metrics.jsonl`, `tensorboard/`, `step-NNNNNNN/`
checkpoints, `hf/` and `result.json`. Starting a run in a folder that already holds one is refused
unless the user says what they want: `resume` (continue it) or `overwrite` (delete those files and
start from step 0). Files lmforge did not write are never deleted.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lmforge.models.config import ConfigError
from lmforge.train.checkpoint import PREFIX, list_checkpoints

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "result.json")
RUN_FOLDERS = ("tensorboard", "hf")


def run_artifacts(run_dir: Path) -> list[Path]:
    """What a previous lmforge run left in `run_dir` (checkpoints, half-written ones included)."""
    if not run_dir.is_dir():
        return []
    found = [run_dir / name for name in (*RUN_FILES, *RUN_FOLDERS) if (run_dir / name).exists()]
    found += sorted(p for p in run_dir.iterdir() if p.name.startswith((PREFIX, f".{PREFIX}")))
    return found


@dataclass(frozen=True)
class RunStart:
    """How a run starts in its folder: `clear` the old run's files first; `message` to print (or None)."""

    clear: bool
    message: str | None = None


def plan_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> RunStart:
    """Decide how a run starts in `run_dir`, or raise `ConfigError` saying what to pass instead.

    Reads only, so every process of a distributed run can call it before the main one writes anything.
    """
    if resume and overwrite:
        raise ConfigError("resume and overwrite exclude each other: --resume true continues the run in "
                          f"{run_dir}, --overwrite true deletes it and starts again")
    old = run_artifacts(run_dir)
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in old[:4]) + (", ..." if len(old) > 4 else "")
    others = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() and not old else []
    if others and not overwrite:
        listed = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
        raise ConfigError(f"{run_dir} is not empty but holds no lmforge run ({listed}): "
                          + ("there is nothing to resume; " if resume else "")
                          + "choose a new or empty --out_dir, or pass --overwrite true to write into it anyway")
    if not old:
        return RunStart(False, f"nothing to resume in {run_dir}: starting from step 0" if resume else None)
    if overwrite:
        return RunStart(True, f"--overwrite: deleting the previous run in {run_dir} ({names})")
    if not resume:
        raise ConfigError(f"{run_dir} already holds a run ({names}): pass --resume true to continue it, "
                          "--overwrite true to delete it and start again from step 0, or choose another --out_dir")
    if not list_checkpoints(run_dir):
        return RunStart(True, f"{run_dir} has no complete checkpoint yet: starting again from step 0")
    return RunStart(False)


def clear_run_dir(run_dir: Path) -> None:
    """Delete what `run_artifacts` lists; nothing else."""
    for path in run_artifacts(run_dir):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def check_same_run(run_dir: Path, expected: dict[str, str]) -> None:
    """Refuse to resume a run whose saved arguments (config.yaml) differ in one of `expected`'s keys
    (the objective of a pretraining run; the task and method of a fine-tuning run)."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    for key, value in expected.items():
        if isinstance(saved, dict) and saved.get(key, value) != value:
            raise ConfigError(f"{run_dir} was started with {key} {saved[key]!r}, not {value!r}: resume with "
                              f"--{key} {saved[key]}, or start a new run")
