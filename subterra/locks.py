"""Advisory file locks (``fcntl.flock``) that serialize work across threads and processes.

A lock is a file beside what it protects; it is exclusive (one holder) or shared (many readers,
no writer), and a caller either waits for it or is refused at once with ``LockBusy``. The kernel
drops a lock when its holder dies, so a crash never leaves a stale one behind.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(RuntimeError):
    """Someone else holds the lock and the caller chose not to wait."""


@contextmanager
def file_lock(path: str | Path, shared: bool = False, wait: bool = True) -> Iterator[None]:
    """Hold the lock at ``path`` (created if missing) for the ``with`` block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(handle, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(f"{path} is held by another process") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
