"""Building and loading the C++ kernels: the cache folder, its reuse, and the fallback when the build fails."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import lmforge.kernels as kernels

build = importlib.import_module("lmforge.kernels.build")  # the module (lmforge.kernels.build is the function)

# A child process: computes each float op through the wrappers, checks it against a float64 formula, and
# prints the backend, the ISA and how many KernelsWarnings it saw (the ops run twice: the warning is once).
CHILD = textwrap.dedent("""
    import warnings
    import torch
    import lmforge.kernels as kernels

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        x = torch.randn(3, 17, dtype=torch.float64)
        w = torch.randn(5, 17, dtype=torch.float64)
        q = torch.randint(-127, 128, (5, 17), dtype=torch.int8)
        s = torch.rand(5, dtype=torch.float64)
        for _ in range(2):
            errors = [
                kernels.linear_f32(x.float(), w.float()).double() - x.float().double() @ w.float().double().t(),
                kernels.linear_bf16(x.float(), w.bfloat16()).double() - x.float().double() @ w.bfloat16().double().t(),
                kernels.linear_int8(x.float(), q, s.float()).double()
                - (x.float().double() @ q.double().t()) * s.float().double(),
            ]
            assert all(e.abs().max().item() < 1e-4 for e in errors), errors
    ours = [w for w in seen if issubclass(w.category, kernels.KernelsWarning) and "could not be built" in str(w.message)]
    print("RESULT", kernels.backend(), kernels.isa(), len(ours))
    for w in ours:
        print("WARNING", w.message)
""")


def run_child(env_update: dict[str, str], timeout: float = 300) -> tuple[list[str], str]:
    env = {**os.environ, **env_update}
    if "LMFORGE_KERNELS" not in env_update:
        env.pop("LMFORGE_KERNELS", None)
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    return result.split()[1:], proc.stdout


def test_build_directory_is_keyed_by_cache_torch_and_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFORGE_KERNELS_CACHE", str(tmp_path / "cache"))
    folder = build.build_directory()
    assert folder.parent == tmp_path / "cache"
    assert torch.__version__.replace("+", "_") in folder.name and build.source_hash() in folder.name
    monkeypatch.delenv("LMFORGE_KERNELS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.build_directory().parent == tmp_path / "xdg" / "lmforge" / "kernels"
    # An edited source (or another compiler) is another folder.
    copy = tmp_path / "csrc"
    shutil.copytree(build.CSRC_DIR, copy)
    monkeypatch.setattr(build, "CSRC_DIR", copy)
    before = build.source_hash()
    (copy / "float_gemv.cpp").write_text((copy / "float_gemv.cpp").read_text() + "\n// edited\n")
    edited = build.source_hash()
    monkeypatch.setenv("CXX", "clang++")
    assert len({before, edited, build.source_hash()}) == 3
    assert build.sources() == sorted(copy.glob("*.cpp"))


def test_failed_build_falls_back_to_the_reference_with_one_warning(tmp_path):
    """No compiler: the ops still compute the right products (the reference), and say so once."""
    (backend, isa, warnings), stdout = run_child({"CXX": "/nonexistent/g++", "LMFORGE_KERNELS_CACHE": str(tmp_path)},
                                                 timeout=120)
    assert (backend, isa, warnings) == ("reference", "reference", "1")
    assert "could not be built" in stdout and "/nonexistent/g++" in stdout and "PyTorch reference" in stdout


def test_forced_reference_does_not_build(tmp_path):
    (backend, isa, warnings), _ = run_child({"LMFORGE_KERNELS": "reference", "LMFORGE_KERNELS_CACHE": str(tmp_path)},
                                            timeout=120)
    assert (backend, isa, warnings) == ("reference", "reference", "0")
    assert not any(tmp_path.iterdir())


def test_cpp_mode_raises_instead_of_falling_back(tmp_path):
    code = "import torch, lmforge.kernels as k; k.build()"
    env = {**os.environ, "LMFORGE_KERNELS": "cpp", "CXX": "/nonexistent/g++", "LMFORGE_KERNELS_CACHE": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "LMFORGE_KERNELS=cpp, but the C++ kernels did not build" in proc.stderr


def have_compiler() -> bool:
    return shutil.which(os.environ.get("CXX", "c++")) is not None and shutil.which("ninja") is not None


@pytest.mark.skipif(not have_compiler(), reason="no C++ compiler or ninja")
def test_build_loads_and_a_second_process_reuses_it():
    """The normal build loads (in this process), and another process loads the cached library without compiling."""
    assert kernels.backend() == "cpp" and kernels.build_error() is None
    assert kernels.isa() in ("scalar", "avx2", "avx512")
    library = Path(kernels.ops._state.library_path)
    mtime = library.stat().st_mtime_ns
    start = time.perf_counter()
    (backend, isa, warnings), _ = run_child({})
    assert (backend, isa, warnings) == ("cpp", kernels.isa(), "0")
    assert library.stat().st_mtime_ns == mtime  # not rebuilt
    assert time.perf_counter() - start < 60  # a compile takes minutes on 2 cores; a load, seconds


@pytest.mark.slow
@pytest.mark.skipif(not have_compiler(), reason="no C++ compiler or ninja")
def test_clean_build_into_an_empty_cache(tmp_path):
    """From an empty cache folder: compile, load, compute; then a second process only loads."""
    (backend, _, _), _ = run_child({"LMFORGE_KERNELS_CACHE": str(tmp_path)}, timeout=900)
    assert backend == "cpp"
    [folder] = tmp_path.iterdir()
    objects = {p: p.stat().st_mtime_ns for p in folder.glob("*.o")}
    assert objects
    (backend, _, _), _ = run_child({"LMFORGE_KERNELS_CACHE": str(tmp_path)}, timeout=120)
    assert backend == "cpp" and {p: p.stat().st_mtime_ns for p in folder.glob("*.o")} == objects


def test_import_builds_nothing():
    """Importing lmforge.kernels compiles nothing and stays cheap (the build runs on the first op call)."""
    code = ("import sys, time; import torch; t = time.perf_counter(); import lmforge.kernels as k; "
            "print(time.perf_counter() - t, k.ops._state.backend, 'torch._dynamo' in sys.modules)")
    env = {**os.environ, "LMFORGE_KERNELS_CACHE": "/nonexistent/cache"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    seconds, backend, dynamo = proc.stdout.split()
    assert backend == "None" and dynamo == "False" and float(seconds) < 2.0
    assert not Path("/nonexistent/cache").exists()
