"""Files and processes shared by data preparation and training: writes that an interruption never leaves half
done, and whether the process that left a lock or a temporary directory is still alive."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Have `write` fill `<path>.tmp`, then rename it over `path`.

    A process killed mid-write leaves the previous file intact, and a write that fails (a full disk) removes its
    partial temporary file instead of leaving it to fill the disk.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
