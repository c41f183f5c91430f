"""`atomic_write`: all or nothing, and the permissions a plain open() would give."""

from __future__ import annotations

import os

import pytest

from lmforge.fileio import atomic_write, atomic_write_bytes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = atomic_write_bytes(tmp_path / "a.bin", b"data")
        with open(tmp_path / "plain.bin", "wb") as f:  # the reference: what open() gives under this umask
            f.write(b"data")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode == (tmp_path / "plain.bin").stat().st_mode & 0o777


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write_bytes(tmp_path / "a.txt", b"old")

    def fail(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
