"""Writing an output so that a crash never leaves half of it: write under a temporary name beside
the target, then rename over it (one system call). A reader sees the old file or the new one.

Folders (a model) are swapped whole: the new folder is built under a staging name and exchanged
with the old one in one step (``renameat2(RENAME_EXCHANGE)`` on Linux), so a reader never finds
no folder at all. Where the exchange is not available, the old folder is first moved aside to
``NAME.previous``; ``recover_dir`` puts it back if a crash struck between the two renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to; it becomes ``target`` (flushed to disk) when
    the block ends without error, and is removed otherwise."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _previous(target: Path) -> Path:
    return target.with_name(target.name + ".previous")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def replace_dir(staging: str | Path, target: str | Path) -> None:
    """Put the finished folder ``staging`` at ``target``, replacing any old one whole."""
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    if not target.exists():
        os.rename(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging)  # now the old folder
        return
    previous = _previous(target)
    shutil.rmtree(previous, ignore_errors=True)
    os.rename(target, previous)
    os.rename(staging, target)  # a crash just before this line leaves only NAME.previous: see recover_dir
    shutil.rmtree(previous)


def recover_dir(target: str | Path) -> Path:
    """``target``, put back from ``NAME.previous`` if a crash struck in the middle of ``replace_dir``."""
    target = Path(target)
    previous = _previous(target)
    if not target.exists() and previous.is_dir():
        os.rename(previous, target)
    return target
