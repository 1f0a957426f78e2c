"""Install a new grant file and its map without a moment where either is missing.

postmap rewrites hash and btree files in place, and smtpd answers 451 to every
recipient while the table it needs is missing. So the map is built from a temp
copy of the grant file, under a temp name in the same directory, and renamed
over the live map; only then is the temp copy renamed over the grant file.
A crash at any point leaves the old map or the new one in place.
"""

import contextlib
import logging
import os
from pathlib import Path

from popbs_tools import fsutil, postfix
from popbs_tools.errors import MapError

log = logging.getLogger(__name__)


def is_current(grant_file: Path, map_type: str) -> bool:
    """Whether the map exists and was built from the grant file as it is now."""
    built = postfix.map_file(grant_file, map_type)
    try:
        source_time = grant_file.stat().st_mtime_ns
        if built is None:
            return True
        return built.stat().st_mtime_ns >= source_time
    except FileNotFoundError:
        return False


def is_current_since(grant_file: Path, since: float) -> bool:
    """Whether a map of some type was built from the grant file as it is now,
    after `since` (when Postfix's default map type last may have changed).

    Then that map is of the type Postfix would name: a cron run that changes
    nothing need not ask postconf.
    """
    try:
        source_time = grant_file.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    for suffix in sorted(set(postfix.SUFFIXES.values())):
        try:
            built = grant_file.with_name(grant_file.name + suffix).stat()
        except FileNotFoundError:
            continue
        if built.st_mtime_ns >= source_time and built.st_mtime >= since:
            return True
    return False


def publish(grant_file: Path, data: bytes, map_type: str, postmap: Path | None) -> None:
    directory = grant_file.parent
    fsutil.remove_stale_temps(directory, grant_file.name)
    try:
        temp = fsutil.write_temp(directory, f".{grant_file.name}.", data, 0o644)
    except OSError as error:
        raise MapError(
            f"cannot write in {directory}: {error.strerror}; "
            "check that it exists and that this user may write there"
        ) from None

    built: Path | None = None
    installed = False
    try:
        target = postfix.map_file(grant_file, map_type)
        if target is not None:
            assert postmap is not None
            built = postfix.build(postmap, map_type, temp)
            # postmap honours the umask; smtpd must be able to read the map.
            os.chmod(built, 0o644)
            os.replace(built, target)
            built = None
        os.replace(temp, grant_file)
        installed = True
        fsutil.fsync_dir(directory)
        log.info("published %s (%s)", grant_file, map_type)
    except OSError as error:
        raise MapError(f"cannot publish {grant_file}: {error}") from None
    finally:
        for leftover in (None if installed else temp, built):
            if leftover is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
