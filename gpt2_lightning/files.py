"""Files and processes shared by data preparation, training and the analysis: writes that an interruption never
leaves half done, content hashes, the disk a path is on, and whether the process that left a lock or a temporary
directory is still alive."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Have `write` fill `<path>.tmp` (beside `path`, on its disk), flush it to the disk, then rename it over `path`.

    A process killed mid-write, or a machine that loses power, leaves the previous file intact, and a write that
    fails (a full disk) removes its partial temporary file instead of leaving it to fill the disk.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)  # the rename itself
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike) -> str:
    """The file's sha256, read in 4 MiB pieces (hashing releases the GIL: several files hash in parallel threads)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while piece := f.read(4 << 20):
            digest.update(piece)
    return digest.hexdigest()


def disk_of(path: Path) -> Path:
    """The mount point of the filesystem holding `path` (or the nearest existing directory above it)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def full_disk_error(path: Path, min_free: int = 1 << 20) -> OSError | None:
    """An OSError naming `path` and its disk when that disk has less than `min_free` bytes left, else None: for
    writers (torch's zip writer) that report a failed write as something other than an OSError."""
    disk = disk_of(path)
    free = shutil.disk_usage(disk).free
    if free >= min_free:
        return None
    return OSError(errno.ENOSPC, f"no space left on the disk mounted at {disk} ({free:,} bytes free)", str(path))


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
