"""One run at a time per work dir: an exclusive ``flock`` on ``<work_dir>/run.lock`` holding the PID.

A forked child (a DataLoader worker) would share the lock with its parent and hold it after the
parent is killed, until it notices (seconds later); so forked children close their copy at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from vlmexp.errors import RunLocked

LOCK_FILE = "run.lock"
_held: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    """Close the held locks' descriptors in a forked child (without unlocking: the parent keeps them)."""
    for fd in _held:
        os.close(fd)
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """Taken with :meth:`acquire` (non-blocking: :class:`RunLocked` names the holder), released with
    :meth:`release` or when the process ends, however it ends."""

    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"another run of this config is in progress (PID {holder}, lock {self.path}); "
                            "wait for it to finish or stop it, then rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _held.add(fd)
        return self

    def release(self) -> None:
        """The file stays (removing it would let a third process lock a new file while a second waits)."""
        if self._fd is not None:
            _held.discard(self._fd)
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
