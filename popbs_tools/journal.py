"""Logins from the systemd journal, read through journalctl.

The position is journalctl's cursor, never a time. An entry counts only when
the journal's trusted fields, which journald sets itself and no client can
forge, show that a POP3/IMAP server logged it: its unit is a server's. A local
user running `logger -t dovecot ...` logs under their session's scope, and so
cannot open the relay by imitating Dovecot's message.
"""

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from popbs_tools.errors import InputError
from popbs_tools.lazyre import LazyPattern
from popbs_tools.logline import Record, finish

log = logging.getLogger(__name__)

# Units of Debian's, Fedora's and upstream's POP3/IMAP server packages, and the
# super-servers that start the inetd-style ones.
SERVER_UNITS = LazyPattern(
    r"(dovecot|courier-(imap|pop)[\w-]*|cyrus-imapd|cyrus|qpopper|uw-imapd|"
    r"popa3d|solid-pop3d|tpop3d|teapop|perdition[\w.@-]*|citadel|kerio-connect|"
    r"zimbra|vpopmail|qmail-pop3d[\w@-]*|inetd|xinetd|openbsd-inetd)\.service"
)
SUPER_SERVERS = LazyPattern(r"(inetd|xinetd|openbsd-inetd)\.service")
# Process names (comm, at most 15 characters) of the servers themselves.
SERVER_COMMANDS = frozenset(
    [
        "dovecot",
        "imap-login",
        "pop3-login",
        "imap",
        "pop3",
        "pop3d",
        "imapd",
        "pop3d-ssl",
        "imapd-ssl",
        "couriertcpd",
        "courierpop3d",
        "courierpop3logi",
        "courierimapd",
        "couriertls",
        "cyrmaster",
        "ipop3d",
        "in.ipop3d",
        "in.imapd",
        "in.qpopper",
        "qpopper",
        "popper",
        "popa3d",
        "solid-pop3d",
        "spop3d",
        "tpop3d",
        "teapop",
        "gnu-pop3d",
        "imap4d",
        "vm-pop3d",
        "perdition",
        "citserver",
        "vchkpw",
        "qmail-pop3d",
    ]
)
# Debian's SYS_UID_MAX: servers run as root or as system users below it.
SYSTEM_UID_MAX = 999

FIELDS = (
    "MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_COMM,_UID,_SYSTEMD_UNIT,"
    "_HOSTNAME,_SOURCE_REALTIME_TIMESTAMP"
)


@dataclass(frozen=True)
class Entry:
    cursor: str
    record: Record | None
    refusal: str = ""


def trust(fields: dict[str, Any]) -> str:
    """Why an entry is not trusted to come from a server, or "" if it is.

    The unit comes from the process's cgroup, which only root can choose. A
    process name alone proves nothing (any process may set its own through
    /proc/self/comm), so it is only asked for under inetd and xinetd, which
    start many kinds of servers, and then only of a system user.
    """
    unit = fields.get("_SYSTEMD_UNIT")
    if not isinstance(unit, str) or not SERVER_UNITS.fullmatch(unit):
        return f"logged under unit {unit!r}, not a POP3/IMAP server's"
    if not SUPER_SERVERS.fullmatch(unit):
        return ""
    comm, uid = fields.get("_COMM"), fields.get("_UID")
    if comm not in SERVER_COMMANDS:
        return f"logged by {comm!r} under {unit}, not by a POP3/IMAP server"
    if not (isinstance(uid, str) and uid.isdigit() and int(uid) <= SYSTEM_UID_MAX):
        return f"logged by {comm!r} as uid {uid}, not a system user"
    return ""


def _text(value: Any) -> str:
    # journalctl writes a field that is not valid UTF-8 as a list of bytes.
    if isinstance(value, list):
        return bytes(v for v in value if isinstance(v, int)).decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def to_entry(fields: dict[str, Any]) -> Entry | None:
    cursor = fields.get("__CURSOR")
    if not isinstance(cursor, str):
        return None
    refusal = trust(fields)
    if refusal:
        return Entry(cursor, None, refusal)

    micros = fields.get("_SOURCE_REALTIME_TIMESTAMP") or fields.get(
        "__REALTIME_TIMESTAMP"
    )
    stamp = None
    if isinstance(micros, str) and micros.isdigit():
        stamp = datetime.fromtimestamp(int(micros) / 1e6, tz=UTC)
    pid = _text(fields.get("SYSLOG_PID")) or _text(fields.get("_PID"))
    record = finish(
        stamp,
        _text(fields.get("_HOSTNAME")),
        _text(fields.get("SYSLOG_IDENTIFIER")),
        pid,
        _text(fields.get("MESSAGE")),
    )
    return Entry(cursor, record)


def _journalctl() -> str:
    import shutil

    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin"])
    found = shutil.which("journalctl", path=search)
    if found is None:
        raise InputError("journalctl not found: --journal needs systemd's journalctl")
    return found


def read(files: tuple[Path, ...], cursor: str | None, since: float) -> Iterator[Entry]:
    """Entries after `cursor`; without one (a first run), those since `since`."""
    import subprocess  # only with --journal: slow to import

    command = [_journalctl(), "--output=json", "--no-pager", "--quiet", "--all"]
    command.append(f"--output-fields={FIELDS}")
    for path in files:
        command.append(f"--file={path}")
    if cursor:
        command.append(f"--after-cursor={cursor}")
    else:
        command.append(f"--since=@{int(since)}")

    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        for line in process.stdout:
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            entry = to_entry(fields) if isinstance(fields, dict) else None
            if entry is not None:
                yield entry
        errors = process.stderr.read().decode("utf-8", "replace").strip()
        if process.wait() != 0:
            detail = (errors.splitlines() or ["no message"])[-1]
            raise InputError(f"journalctl failed: {detail}")
