"""Atomic file replacement: a reader sees the old file or the new one, never half."""

import contextlib
import os
import re
import stat
import time
from pathlib import Path

# A run killed between creating a temp file and renaming it leaves the file
# behind; one this old belongs to no live run (they hold the lock meanwhile).
STALE_AFTER = 600.0


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_temp(directory: Path, prefix: str, data: bytes, mode: int) -> Path:
    """Write `data` to a new, unpredictably named file in `directory`.

    mkstemp opens with O_EXCL, so nothing planted under the name is followed.
    The caller renames or removes the file.
    """
    import tempfile

    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return Path(name)


def replace(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`: temp file, fsync, rename, fsync the directory."""
    temp = write_temp(path.parent, f".{path.name}.", data, mode)
    try:
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def remove_stale_temps(directory: Path, name: str, now: float | None = None) -> None:
    """Remove temp files of `name` that a killed run left in `directory`.

    They are the names write_temp() gives (".NAME." and mkstemp's eight
    characters), maybe with the suffix postmap added.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}(\.\w+)?")
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if now - info.st_mtime > STALE_AFTER:
                os.unlink(entry.path)


def unsafe(path: Path) -> str | None:
    """Why popbs must not use `path` (a file or directory of its own), or None.

    A symbolic link that another user owns could point popbs, running as
    root, at any file; so could any user in a world-writable directory
    without the sticky bit, by replacing the name.
    """
    me = os.geteuid()
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (me, 0):
            return f"it is a symbolic link owned by uid {info.st_uid}"
    except FileNotFoundError:
        pass
    except OSError as error:
        return error.strerror
    parent = path.parent
    try:
        mode = os.stat(parent).st_mode
    except OSError:
        return None  # reported when the directory is used
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        return f"{parent} is writable by everyone and not sticky"
    return None


def foreign(directory: Path) -> str | None:
    """Why popbs must not trust what is in `directory`, its own, or None.

    Another user who owns it, or may write to it, could plant state or
    requests that popbs, running as root, would act on.
    """
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror
    if info.st_uid not in (0, os.geteuid()):
        return f"it is owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "it is writable by other users"
    return None
