"""Postfix's own commands: postconf for defaults, postmap to build the map."""

import logging
import os
from functools import cache
from pathlib import Path

from popbs_tools.errors import MapError

log = logging.getLogger(__name__)

MAP_TYPES = ("hash", "btree", "lmdb", "cdb", "none")
SUFFIXES = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}

# cron's PATH is usually /usr/bin:/bin; Postfix installs its commands in sbin.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/opt/local/sbin", "/usr/pkg/sbin")


def find_postconf() -> str:
    """postconf's path, in PATH or in the usual sbin directories."""
    import shutil

    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found = shutil.which("postconf", path=search)
    if found is None:
        raise MapError(
            "postconf not found: install Postfix, or give --postmap and --map-type"
        )
    return found


def run_postconf(*args: str, command: str | None = None) -> str:
    """postconf's output for `args`; MapError with its last word if it fails."""
    import subprocess

    argv = [command or find_postconf(), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MapError(f"cannot run {argv[0]}: {error}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise MapError(f"postconf {' '.join(args)} failed: {detail}")
    return done.stdout


@cache
def postconf(name: str, expand: bool = False) -> str:
    """One main.cf parameter, read as Postfix reads it (MAIL_CONFIG included).

    With `expand`, $name references in the value are expanded (postconf -x,
    Postfix 2.10 and later).
    """
    return run_postconf("-xh" if expand else "-h", name).strip()


def default_map_type() -> str:
    value = postconf("default_database_type")
    if value not in SUFFIXES:
        raise MapError(
            f"Postfix's default_database_type is {value!r}, which popbs cannot "
            f"build; give --map-type ({', '.join(MAP_TYPES)})"
        )
    return value


def settled_since() -> float | None:
    """When Postfix's answer about its default map type may last have changed.

    That is the last change to main.cf (MAIL_CONFIG, as postconf reads it) or
    to the postconf binary (a package upgrade can change the compiled-in
    default; dpkg keeps the packaged mtime, so the ctime is what moves).
    None when either cannot be found: then only postconf can tell.
    """
    config = _changed_at(
        Path(os.environ.get("MAIL_CONFIG") or "/etc/postfix") / "main.cf"
    )
    search = [*os.environ.get("PATH", "").split(os.pathsep), *_SBIN]
    found = (_changed_at(Path(part) / "postconf") for part in search if part)
    binary = next((when for when in found if when is not None), None)
    if config is None or binary is None:
        return None
    return max(config, binary)


def _changed_at(path: Path) -> float | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return max(status.st_mtime, status.st_ctime)


def default_postmap() -> Path:
    return Path(postconf("command_directory")) / "postmap"


def map_file(source: Path, map_type: str) -> Path | None:
    """The file postmap builds from `source`, or None for the plain file alone."""
    if map_type == "none":
        return None
    return source.with_name(source.name + SUFFIXES[map_type])


def build(postmap: Path, map_type: str, source: Path) -> Path:
    """Run postmap on `source` and return the file it built.

    postmap exits 0 after some warnings (a malformed line is skipped, not
    refused), so a warning about our own file counts as a failure.
    """
    import subprocess

    command = [str(postmap), f"{map_type}:{source}"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise MapError(
            f"postmap not found at {postmap}: install Postfix or give --postmap"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MapError(f"cannot run {postmap}: {error}") from None

    lines = done.stderr.strip().splitlines()
    ours = [line for line in lines if str(source) in line or source.name in line]
    if done.returncode != 0 or ours:
        detail = (ours or lines or [f"exit status {done.returncode}"])[-1]
        raise MapError(f"postmap failed: {detail}")
    for line in lines:
        log.warning("%s", line)

    built = map_file(source, map_type)
    assert built is not None
    if not built.exists():
        raise MapError(f"postmap reported success but {built} is missing")
    return built
