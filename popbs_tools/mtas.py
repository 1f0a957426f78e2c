"""Publish the grants for the MTA in use: Postfix, Sendmail, Exim or qmail.

The grant file (`IP TIME`) stays the source of truth for every MTA: list and
check read it back. Postfix reads it through postmap (publish.py). For the
others popbs derives a file in the MTA's form beside it, and rebuilds what
the MTA reads from that:

  sendmail  MAP.access    access(5) lines; makemap hash builds MAP.access.db
  exim      MAP.lsearch   read as it is by a net-lsearch host list
  qmail     MAP.tcprules  tcprules lines; tcprules builds MAP.cdb

Sendmail and tcpserver read one table each, so the admin's own lines for it
go in MAP.local, which popbs puts first.

The same care as for Postfix: every file is written under a temp name in the
map's directory, what the MTA reads is renamed into place first, the grant
file last. A crash at any point leaves the old table or the new one.
"""

import contextlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from popbs_tools import fsutil, grants, mtaforms, publish
from popbs_tools.errors import MapError

if TYPE_CHECKING:
    import subprocess

    from popbs_tools.settings import Settings

log = logging.getLogger(__name__)

MTAS = ("postfix", "sendmail", "exim", "qmail")
DEFAULT_MAPS = {
    "postfix": Path("/etc/postfix/popbs"),
    "sendmail": Path("/etc/mail/popbs"),
    "exim": Path("/etc/exim4/popbs"),
    "qmail": Path("/etc/qmail/popbs"),
}

# Without its config file makemap refuses to run; the table it builds is the
# same, since popbs passes no option that the file could change.
SENDMAIL_CF = Path("/etc/mail/sendmail.cf")

# cron's PATH is usually /usr/bin:/bin; makemap lives in sbin.
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin")
# makemap and tcprules build 100 000 entries in about a second; one that runs
# far longer is stuck (tcprules spins on some malformed lines), and the lock
# must not be held for minutes.
MAP_TIMEOUT = 60


@dataclass(frozen=True)
class Files:
    """The files popbs writes beside the grant file for one MTA."""

    source: Path  # the MTA's form of the grants
    built: Path | None  # what the MTA reads, if not the source itself
    local: Path | None  # the admin's own lines, put first in the table


def files(grant_file: Path, mta: str) -> Files:
    name = grant_file.name
    local = grant_file.with_name(name + ".local")
    if mta == "sendmail":
        source = grant_file.with_name(name + ".access")
        return Files(source, source.with_name(source.name + ".db"), local)
    if mta == "exim":
        return Files(grant_file.with_name(name + ".lsearch"), None, None)
    if mta == "qmail":
        rules = grant_file.with_name(name + ".tcprules")
        return Files(rules, grant_file.with_name(name + ".cdb"), local)
    raise ValueError(mta)


def is_current(settings: "Settings") -> bool:
    """Whether the MTA's table exists and was built from the grant file as it is."""
    if settings.mta == "postfix":
        return publish.is_current(settings.map_path, settings.map_type)
    derived = files(settings.map_path, settings.mta)
    try:
        source_time = settings.map_path.stat().st_mtime_ns
        if derived.local is not None:
            with contextlib.suppress(FileNotFoundError):
                # An edited MAP.local is published by the next run.
                source_time = max(source_time, derived.local.stat().st_mtime_ns)
        for path in (derived.source, derived.built):
            if path is not None and path.stat().st_mtime_ns < source_time:
                return False
    except FileNotFoundError:
        return False
    return True


def publish_grants(settings: "Settings", data: bytes) -> None:
    """Install `data` as the grant file and the MTA's table built from it."""
    if settings.mta == "postfix":
        publish.publish(settings.map_path, data, settings.map_type, settings.postmap)
        return
    _publish_derived(settings.map_path, data, settings.mta)


def _publish_derived(grant_file: Path, data: bytes, mta: str) -> None:
    directory = grant_file.parent
    derived = files(grant_file, mta)
    for path in (grant_file, derived.source, derived.built):
        if path is not None:
            fsutil.remove_stale_temps(directory, path.name)

    table = grants.parse(data)
    local = _read_local(derived.local)
    leftovers: list[Path] = []
    try:
        # The grant file's temp is written first: what is built from it is
        # newer, which is how is_current() knows the table is up to date.
        temp_grants = _temp(grant_file, data, leftovers)
        if mta == "sendmail":
            source = mtaforms.sendmail_access(table, local)
            temp_source = _temp(derived.source, source, leftovers)
            assert derived.built is not None
            _makemap(temp_source, derived.built, leftovers)
        elif mta == "exim":
            temp_source = _temp(derived.source, mtaforms.exim_lsearch(table), leftovers)
        else:
            temp_source = _tcprules(table, local, derived, leftovers)

        os.replace(temp_source, derived.source)
        os.replace(temp_grants, grant_file)
        leftovers.clear()
        fsutil.fsync_dir(directory)
        log.info("published %s (%s)", grant_file, mta)
    except OSError as error:
        raise MapError(f"cannot publish {grant_file}: {error}") from None
    finally:
        for path in leftovers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _read_local(path: Path | None) -> bytes:
    """The admin's own lines, if root (or this user) wrote them.

    They go into the table first, so they must come from no one else: not
    through a link, not from a file another user owns or may write.
    """
    if path is None:
        return b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    except OSError as error:
        raise MapError(f"cannot read {path}: {error.strerror}") from None
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = "it is not a regular file"
    elif info.st_uid not in (0, os.geteuid()):
        problem = f"it is owned by uid {info.st_uid}"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = "it is writable by other users"
    if problem:
        os.close(fd)
        raise MapError(f"refusing to use {path}: {problem}")
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def _temp(target: Path, data: bytes, leftovers: list[Path]) -> Path:
    try:
        temp = fsutil.write_temp(target.parent, f".{target.name}.", data, 0o644)
    except OSError as error:
        raise MapError(
            f"cannot write in {target.parent}: {error.strerror}; "
            "check that it exists and that this user may write there"
        ) from None
    leftovers.append(temp)
    return temp


def find_command(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    import shutil

    found = shutil.which(name, path=search)
    if found is None:
        raise MapError(f"{name} not found in PATH: install it or add it to PATH")
    return found


def _run(command: list[str], stdin: Path) -> "subprocess.CompletedProcess[str]":
    import subprocess

    try:
        with open(stdin, "rb") as handle:
            return subprocess.run(
                command,
                stdin=handle,
                capture_output=True,
                text=True,
                timeout=MAP_TIMEOUT,
            )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MapError(f"cannot run {command[0]}: {error}") from None


def _failure(name: str, done: "subprocess.CompletedProcess[str]") -> str:
    lines = done.stderr.strip().splitlines()
    return f"{name} failed: {(lines or [f'exit status {done.returncode}'])[-1]}"


def _makemap(source: Path, target: Path, leftovers: list[Path]) -> None:
    """Build `target` (a .db) from `source` with makemap, then rename it in."""
    command = [find_command("makemap")]
    if not SENDMAIL_CF.exists():
        command += ["-C", os.devnull]
    command += ["hash", str(source)]
    built = source.with_name(source.name + ".db")
    leftovers.append(built)
    done = _run(command, source)
    # makemap warns about a line and still exits 0; popbs wrote every line,
    # so such a warning is a failure. Others (an unsafe directory) are passed on.
    lines = done.stderr.strip().splitlines()
    if done.returncode != 0 or any(source.name in line for line in lines):
        raise MapError(_failure("makemap", done))
    for line in lines:
        log.warning("%s", line)

    # makemap honours the umask; Sendmail must be able to read the map.
    os.chmod(built, 0o644)
    _fsync(built)
    os.replace(built, target)


def _tcprules(
    table: grants.Grants, local: bytes, derived: Files, leftovers: list[Path]
) -> Path:
    """Write the rules, have tcprules build `target`; return the rules' temp.

    tcprules writes the cdb to the temp name it is given and renames it over
    `target` itself. The original ucspi-tcp cannot parse an IPv6 rule: then
    the IPv6 grants are left out rather than the whole table going stale.
    """
    tcprules = find_command("tcprules")
    source, target = derived.source, derived.built
    assert target is not None
    temp_source = _temp(source, mtaforms.qmail_rules(table, local), leftovers)
    done = _tcprules_run(tcprules, temp_source, target, leftovers)
    # The original ucspi-tcp names the first line it cannot parse.
    refused = done.stderr.partition("unable to parse this line: ")[2].strip()
    if done.returncode != 0 and refused and _ipv6_grant_rule(refused):
        ipv6 = sum(1 for key in table if ":" in key)
        log.warning(
            "%s cannot parse IPv6 rules (install ucspi-tcp-ipv6): "
            "%d IPv6 grants left out of %s",
            tcprules,
            ipv6,
            target,
        )
        temp_source = _temp(
            source, mtaforms.qmail_rules(table, local, ipv6=False), leftovers
        )
        done = _tcprules_run(tcprules, temp_source, target, leftovers)
    if done.returncode != 0:
        raise MapError(_failure("tcprules", done))
    return temp_source


def _ipv6_grant_rule(line: str) -> bool:
    address, _, instructions = line.rpartition(":allow,")
    return ":" in address and instructions == 'RELAYCLIENT=""'


def _tcprules_run(
    tcprules: str, rules: Path, target: Path, leftovers: list[Path]
) -> "subprocess.CompletedProcess[str]":
    # tcprules truncates its temp file and keeps the mode: created here, it
    # has an unpredictable name and the 0644 tcpserver needs to read the cdb.
    temp_cdb = _temp(target, b"", leftovers)
    return _run([tcprules, str(target), str(temp_cdb)], rules)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_map(mta: str) -> Path:
    return DEFAULT_MAPS[mta]
