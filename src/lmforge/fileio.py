"""Atomic file writes: a reader (or a resume after a crash) never sees half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else set and put back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call `write(tmp_path)` on a temporary file beside `target`, flush it to disk, then rename it into place.

    The file gets the permissions a plain `open(target, "w")` would give (0666 less the umask), not
    the owner-only 0600 of temporary files, so others can read checkpoints and data where the umask lets them.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after writing: some writers (safetensors) replace the file
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """`atomic_write` of a bytes payload."""
    return atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
