"""A counter the worker processes of one gateway share (``turnout serve --workers N``): bumped
when a key is revoked or rotated, or a session ends, through any worker, so every worker drops
its cached key and session lookups at its next request instead of within ``KEY_CACHE_S``.

It is 8 bytes of a memory-mapped file in the run's folder: reading it costs a memory read per
request, no system call. Changes made outside the gateway's processes (``turnout keys revoke``
from a shell, another replica) do not bump it; those still reach every worker within
``KEY_CACHE_S``.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from pathlib import Path

_SIZE = 8


class KeyEpoch:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _SIZE:
            os.ftruncate(self._fd, _SIZE)  # zeros; a worker that finds it sized keeps its value
        self._map = mmap.mmap(self._fd, _SIZE)

    def value(self) -> int:
        return int.from_bytes(self._map[:_SIZE], "little")

    def bump(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)  # two workers bumping at once both count
        try:
            self._map[:_SIZE] = (self.value() + 1).to_bytes(_SIZE, "little")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd >= 0:  # once: a second close must not close a descriptor that was reused meanwhile
            self._map.close()
            os.close(self._fd)
            self._fd = -1
