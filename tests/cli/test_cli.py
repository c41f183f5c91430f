"""The `lmforge` entry point: fast start, --version, one-line usage errors, help text, run-folder resume."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys

import pytest
import yaml

import lmforge
from lmforge.cli import dict_options, main, normalize_argv
from lmforge.cli.pretrain import pretrain
from lmforge.train.config import TrainConfig


def _run(capsys, *argv) -> tuple[int, str, str]:
    """main(argv) -> (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_the_cli_and_pretrain_help_do_not_import_torch():
    code = ("import sys\n"
            "import lmforge.cli\n"
            "assert 'torch' not in sys.modules, 'import lmforge.cli imported torch'\n"
            "try:\n"
            "    lmforge.cli.main(['pretrain', '--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "assert 'torch' not in sys.modules, 'lmforge pretrain --help imported torch'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage: lmforge" in out.stdout


def test_lazy_train_package_still_exports_its_names():
    import lmforge.train

    assert lmforge.train.TrainConfig is TrainConfig
    assert set(lmforge.train.__all__) <= set(dir(lmforge.train))
    with pytest.raises(AttributeError):
        lmforge.train.no_such_name  # noqa: B018


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"lmforge {lmforge.__version__}"


@pytest.mark.parametrize(("argv", "named", "hint"), [
    (["frobnicate"], ["frobnicate"], "lmforge --help"),
    (["data", "frobnicate"], ["frobnicate"], "lmforge data --help"),
    (["convert", "only-a-source"], ["destination"], "lmforge convert --help"),
    (["pretrain", "--train.steps", "many"], ["train.steps", "many"], "lmforge pretrain --help"),
    (["pretrain", "--no_such_option", "1"], ["no_such_option"], "lmforge pretrain --help"),
])
def test_usage_errors_are_one_line_and_a_hint(capsys, argv, named, hint):
    code, out, err = _run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 2 and lines[0].startswith("lmforge: error: ") and hint in lines[1]
    assert all(name in lines[0] for name in named)
    assert "usage:" not in err


def test_unknown_key_in_a_yaml_config_is_named(capsys, tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "d", "tokenizer": "t"}, "train": {"seq_lenn": 8}}))
    code, _, err = _run(capsys, "pretrain", "--config", str(path))
    assert code == 2 and "seq_lenn" in err and len(err.strip().splitlines()) == 2


def _attribute_docstring(cls: type, name: str) -> str:
    """The string literal after `name`'s annotation in `cls`'s body."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    for stmt, after in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and stmt.target.id == name:
            assert isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant), f"{name} has no docstring"
            return after.value.value
    raise AssertionError(f"{cls.__name__} has no field {name}")


def test_help_shows_the_fields_docstrings(capsys):
    code, out, _ = _run(capsys, "pretrain", "--help")
    doc = _attribute_docstring(TrainConfig, "grad_clip")
    assert code == 0 and "".join(doc.split()) in "".join(out.split())  # whitespace aside (the help is wrapped)


def test_dict_options_come_from_the_signature():
    assert dict_options(pretrain) == {"model.overrides"}
    assert normalize_argv(["pretrain", "--model.overrides", "{n_layers: 2, rope_scaling: {factor: 4.0}}"]) == [
        "pretrain", "--model.overrides.n_layers=2", '--model.overrides.rope_scaling={"factor": 4.0}']
    assert normalize_argv(["pretrain", "--model.overrides={}"]) == ["pretrain", "--model.overrides={}"]


def _saved_run(folder, **train) -> None:
    """A run folder's config.yaml as the trainer writes it: exactly pretrain's arguments."""
    folder.mkdir(parents=True)
    cfg = {"data": {"path": "some/data", "tokenizer": "some/tok"},
           "model": {"preset": "gpt2-tiny", "overrides": {"n_layers": 1}}, "objective": "clm",
           "train": {"steps": 7, "batch_size": 4, **train}, "out_dir": str(folder), "device": "cpu"}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))


@pytest.mark.parametrize("resume", [["--resume", "true"], ["--resume=true"]])
def test_resume_reads_the_run_folders_config(capsys, tmp_path, resume):
    _saved_run(tmp_path / "run")
    code, out, _ = _run(capsys, "pretrain", "--out_dir", str(tmp_path / "run"), *resume, "--train.steps", "9",
                        "--print_config")
    cfg = yaml.safe_load(out)
    assert code == 0 and cfg["resume"] is True
    assert cfg["data"]["path"] == "some/data" and cfg["model"]["preset"] == "gpt2-tiny" and cfg["device"] == "cpu"
    assert cfg["train"]["batch_size"] == 4 and cfg["train"]["steps"] == 9  # later arguments still win


def test_resume_uses_the_default_run_folder(capsys, tmp_path, monkeypatch):
    default = inspect.signature(pretrain).parameters["out_dir"].default
    _saved_run(tmp_path / default)
    monkeypatch.chdir(tmp_path)
    _, out, _ = _run(capsys, "pretrain", "--resume", "true", "--print_config")
    assert yaml.safe_load(out)["model"]["preset"] == "gpt2-tiny"


def test_resume_without_a_saved_config_or_with_config_is_left_alone(tmp_path):
    _saved_run(tmp_path / "run")
    given = ["pretrain", "--config", "other.yaml", "--out_dir", str(tmp_path / "run"), "--resume", "true"]
    assert normalize_argv(given) == given
    for argv in (["pretrain", "--out_dir", str(tmp_path / "none"), "--resume", "true"],
                 ["pretrain", "--out_dir", str(tmp_path / "run"), "--resume", "false"]):
        assert normalize_argv(argv) == argv
