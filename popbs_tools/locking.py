"""One popbs run at a time, by an flock on a file in the state directory.

flock is released by the kernel when the process dies, so a killed run never
leaves a stale lock behind, and no PID file is needed.

A run that waits for the lock says so by a shared flock on LOCK.wanted, so
that a watching sync (`sync --watch`), which holds the lock for up to a
minute or more, hands it over at its next poll instead of making it wait.
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
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait <= 0:
                raise Busy(str(path)) from None
            with _wanting(path):
                _wait_for(fd, path, wait)
        yield
    finally:
        os.close(fd)


def _wait_for(fd: int, path: Path, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        time.sleep(0.05)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Busy(str(path)) from None


def wanted_path(path: Path) -> Path:
    return path.with_name(path.name + ".wanted")


def _open(path: Path) -> int:
    try:
        return os.open(
            path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as error:
        raise StateError(f"cannot open lock file {path}: {error.strerror}") from None


@contextmanager
def _wanting(path: Path) -> Iterator[None]:
    fd = _open(wanted_path(path))
    try:
        # Blocks only for the instant in which a holder looks (waited_for).
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def waited_for(path: Path) -> bool:
    """Whether another process waits for the lock at `path` (which we hold)."""
    return _held_by_others(wanted_path(path))


def _next_path(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def next_in_line(path: Path) -> bool:
    """Whether a watching run waits in line (first_in_line) for `path`."""
    return _held_by_others(_next_path(path))


def _held_by_others(path: Path) -> bool:
    # Taken and let go at once when free: an exclusive try says whether
    # anyone holds it, shared or not.
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@contextmanager
def first_in_line(path: Path) -> Iterator[bool]:
    """Whether this is the only watching run queued for the lock at `path`.

    Two cron minutes' runs waiting at once would hand the lock to and fro;
    the second one leaves instead.
    """
    fd = _open(_next_path(path))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
