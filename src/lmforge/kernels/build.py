"""Compile the kernels' C++ sources (`csrc/*.cpp`) on first use and load them into this process.

torch's `cpp_extension.load` does the work (it needs a C++ compiler and ninja). The build lands in a cache
folder keyed by the torch and Python versions and a hash of the sources and flags, so an edit rebuilds, two
torch versions never share a library, and a second process reuses the first one's build in a fraction of a
second. Nothing is compiled with `-march=native` (a cache folder may be shared between machines): each fast
function carries a target attribute and the code picks its path at run time (`csrc/common.h`).

    LMFORGE_KERNELS_CACHE   the cache folder (default: $XDG_CACHE_HOME/lmforge/kernels or ~/.cache/...)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch

CSRC_DIR = Path(__file__).resolve().parent / "csrc"
EXTENSION_NAME = "lmforge_kernels"
# torch adds its own -std= (C++20 since torch 2.10): a -std=c++17 here would override it and break its headers.
CFLAGS = ["-O3", "-fopenmp", "-DNDEBUG"]
LDFLAGS = ["-fopenmp"]  # resolves to the libgomp torch already loaded (same soname): one OpenMP pool


def cache_root() -> Path:
    """The folder every build goes under: $LMFORGE_KERNELS_CACHE, else the user's cache folder."""
    if os.environ.get("LMFORGE_KERNELS_CACHE"):
        return Path(os.environ["LMFORGE_KERNELS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "lmforge" / "kernels"


def sources() -> list[Path]:
    """The C++ files compiled into the extension: every `csrc/*.cpp` (headers are hashed, not compiled)."""
    return sorted(CSRC_DIR.glob("*.cpp"))


def source_hash() -> str:
    """A hash of every file in csrc/, the flags, the compiler named by $CXX and csrc/'s path: what the build
    depends on."""
    digest = hashlib.sha256()
    for path in sorted(p for p in CSRC_DIR.iterdir() if p.suffix in (".cpp", ".h")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    # The folder too: torch's build.ninja names the sources by absolute path, so two checkouts sharing one
    # cache would otherwise rebuild each other's library every time they alternate.
    digest.update(repr((CFLAGS, LDFLAGS, os.environ.get("CXX", ""), str(CSRC_DIR))).encode())
    return digest.hexdigest()[:16]


def build_directory(key: str | None = None) -> Path:
    """This build's folder: <cache>/torch<version>-py<major><minor>-<source hash>."""
    key = key or source_hash()
    tag = f"torch{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}-{key}"
    return cache_root() / tag.replace("+", "_")


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; a venv used without activating it has the `ninja` package's binary off it."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja
    except ImportError:
        return  # torch's own error then says that ninja is missing
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def load_extension(verbose: bool = False) -> Path:
    """Compile (or reuse) and load the extension; its ops appear under `torch.ops.lmforge`. Raises on failure."""
    from torch.utils import cpp_extension

    _ninja_on_path()
    srcs = sources()
    if not srcs:
        raise RuntimeError(f"no C++ sources in {CSRC_DIR}")
    key = source_hash()
    folder = build_directory(key)
    folder.mkdir(parents=True, exist_ok=True)
    # The name carries the hash: torch would otherwise re-version a name loaded twice with other sources.
    name = f"{EXTENSION_NAME}_{key[:8]}"
    cpp_extension.load(name=name, sources=[str(s) for s in srcs], build_directory=str(folder),
                       extra_cflags=CFLAGS, extra_ldflags=LDFLAGS, extra_include_paths=[str(CSRC_DIR)],
                       is_python_module=False, verbose=verbose)
    return folder / f"{name}.so"
