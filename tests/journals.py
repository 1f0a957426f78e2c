"""Real journal files, made with systemd-journal-remote from export format.

journald sets the trusted fields (_COMM, _UID, _SYSTEMD_UNIT) itself from the
logging process; systemd-journal-remote writes them as given, which lets a
test make entries as journald would have recorded a server or a local user.
"""

import shutil
import subprocess
from pathlib import Path

JOURNAL_REMOTE = Path("/lib/systemd/systemd-journal-remote")
JOURNALCTL = shutil.which("journalctl")
BOOT_ID = "0123456789abcdef0123456789abcdef"


def available() -> bool:
    return JOURNAL_REMOTE.exists() and JOURNALCTL is not None


class JournalFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._monotonic = 0

    def add(self, when: float, message: str, **fields: str) -> None:
        """Append one entry; `fields` are journal fields such as _COMM="dovecot"."""
        self._monotonic += 1000
        lines = [
            f"__REALTIME_TIMESTAMP={int(when * 1_000_000)}",
            f"__MONOTONIC_TIMESTAMP={self._monotonic}",
            f"_BOOT_ID={BOOT_ID}",
            f"MESSAGE={message}",
            *(f"{key}={value}" for key, value in fields.items()),
        ]
        export = self.path.with_suffix(".export")
        export.write_text("\n".join(lines) + "\n\n")
        subprocess.run(
            [str(JOURNAL_REMOTE), f"--output={self.path}", str(export)],
            check=True,
            capture_output=True,
            timeout=60,
        )


DOVECOT_SERVICE = {
    "_COMM": "dovecot",
    "_UID": "0",
    "_PID": "1327",
    "_SYSTEMD_UNIT": "dovecot.service",
    "SYSLOG_IDENTIFIER": "dovecot",
}


def dovecot_message(ip: str, user: str = "alice") -> str:
    return (
        f"imap-login: Login: user=<{user}>, method=PLAIN, rip={ip}, "
        "lip=192.0.2.10, mpid=5120, TLS"
    )
