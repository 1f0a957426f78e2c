"""The audit trail: one system-log line per grant added or pruned (--syslog).

It answers the abuse desk's question, which account relayed from this address
at that time: an added grant names the login that made it (user, server, the
login's time), a pruned one the address and the time its grant was last
renewed. The lines go to the `popbs_tools.audit` logger, so -v shows them on
stderr too; --syslog adds a handler for the system log, facility mail, ident
popbs, as Postfix's own lines are.
"""

import logging
import os
from collections.abc import Mapping
from datetime import datetime

log = logging.getLogger(__name__)

SYSLOG_SOCKET = "/dev/log"
# Not a setting: only the tests have a reason to move the system log. They
# bind a datagram socket of their own and name it here.
SOCKET_VARIABLE = "POPBS_SYSLOG_SOCKET"
IDENT = "popbs"


def _stamp(when: float) -> str:
    # ISO 8601 with the offset: unambiguous in a ticket, whatever the zone.
    return datetime.fromtimestamp(when).astimezone().isoformat()


def field(text: str) -> str:
    """A value as one word: white space, backslashes and control characters
    become \\xNN (\\uNNNN, \\UNNNNNNNN beyond Latin-1), so that a user name
    cannot forge the rest of a line, and every escape reads one way."""
    if text.isprintable() and " " not in text and "\\" not in text:
        return text or "-"
    return "".join(
        char
        if char.isprintable() and not char.isspace() and char != "\\"
        else _escape(char)
        for char in text
    )


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def added(key: str, when: float, user: str | None, server: str | None) -> None:
    if user is None or server is None:
        # Refreshed for an IMAP session still open, or merged by hand.
        log.info("added %s time=%s", key, _stamp(when))
        return
    log.info(
        "added %s user=%s server=%s time=%s",
        key,
        field(user),
        field(server),
        _stamp(when),
    )


def pruned(key: str, when: float) -> None:
    log.info("pruned %s time=%s", key, _stamp(when))


def report(
    added_keys: tuple[str, ...],
    removed_keys: tuple[str, ...],
    before: Mapping[str, int],
    after: Mapping[str, int],
    logins: Mapping[str, tuple[str, str]],
) -> None:
    """The lines for one change of the grant file; `logins` gives the user
    and server of the newest login of each address, where one was read."""
    for key in added_keys:
        user, server = logins.get(key, (None, None))
        added(key, after[key], user, server)
    for key in removed_keys:
        pruned(key, before[key])


def to_syslog(environ: Mapping[str, str]) -> None:
    """Send the audit lines to the system log as well."""
    # Imported here: logging.handlers brings socket and more, which a cron
    # run without --syslog does not need.
    import logging.handlers
    import socket

    class _SysLogHandler(logging.handlers.SysLogHandler):
        def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
            # The system log went away mid-run (syslogd restarting): one line
            # on stderr, not logging's traceback, and the run goes on.
            if not getattr(self, "_warned", False):
                self._warned = True
                logging.getLogger("popbs_tools").warning(
                    "cannot reach the system log at %s; audit lines lost",
                    self.address,
                )

    path = environ.get(SOCKET_VARIABLE) or SYSLOG_SOCKET
    handler = _SysLogHandler(
        address=path,
        facility=logging.handlers.SysLogHandler.LOG_MAIL,
        socktype=socket.SOCK_DGRAM,
    )
    handler.append_nul = False
    handler.ident = f"{IDENT}[{os.getpid()}]: "
    handler.setLevel(logging.INFO)
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
