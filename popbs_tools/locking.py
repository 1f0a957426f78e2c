"""One popbs run at a time, by an flock on a file in the state directory.

flock is released by the kernel when the process dies, so a killed run never
leaves a stale lock behind, and no PID file is needed.
"""

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from popbs_tools.errors import StateError


class Busy(Exception):
    """Another run holds the lock."""


@contextmanager
def held(path: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on `path`, waiting up to `wait` seconds.

    Raises Busy when it cannot be had in time.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise StateError(f"cannot open lock file {path}: {error.strerror}") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(str(path)) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
