"""--syslog: the audit trail, read from a system-log socket of the test's own."""

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = "2026-12-04T15:00:00"
# facility mail (2) * 8 + severity info (6)
MAIL_INFO = "<22>"


def stamp(*parts: int) -> str:
    local = time.mktime(datetime(*parts).timetuple())
    return datetime.fromtimestamp(local).astimezone().isoformat()


@pytest.fixture
def syslog() -> Iterator[tuple[socket.socket, Path]]:
    # A short directory: a unix socket's path is limited to 108 bytes.
    directory = Path(tempfile.mkdtemp(prefix="popbs-log-"))
    path = directory / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    try:
        yield server, path
    finally:
        server.close()
        shutil.rmtree(directory)


def received(server: socket.socket) -> list[str]:
    """The datagrams waiting on `server` (the run has ended: all are there)."""
    server.setblocking(False)
    lines = []
    while True:
        try:
            lines.append(server.recv(65536).decode())
        except BlockingIOError:
            return lines


def run(
    setup: Setup, path: Path | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = env or setup.env()
    if path is not None:
        env["POPBS_SYSLOG_SOCKET"] = str(path)
    return subprocess.run(
        [sys.executable, "-m", "popbs_tools", "sync", *setup.settings(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def without_pid(lines: list[str]) -> list[str]:
    return [re.sub(r"^(<\d+>popbs)\[\d+\]: ", r"\1: ", line) for line in lines]


def test_added_and_pruned_grants_reach_the_system_log(
    tmp_path: Path, syslog: tuple[socket.socket, Path]
) -> None:
    server, path = syslog
    setup = Setup(tmp_path)
    setup.append(
        dovecot_line("198.51.100.2", user="bob", when="Dec  4 14:40:00"),
        dovecot_line("198.51.100.2", user="alice", when="Dec  4 14:45:00"),
        dovecot_line("2001:db8::2", user="carol", when="Dec  4 14:50:00"),
    )
    done = run(setup, path, "--syslog", "--now", NOW)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    lines = received(server)
    assert all(re.match(rf"{MAIL_INFO}popbs\[\d+\]: ", line) for line in lines)
    assert without_pid(lines) == [
        f"{MAIL_INFO}popbs: added 198.51.100.2 user=alice server=dovecot "
        f"time={stamp(2026, 12, 4, 14, 45)}",
        f"{MAIL_INFO}popbs: added 2001:db8::2 user=carol server=dovecot "
        f"time={stamp(2026, 12, 4, 14, 50)}",
    ]

    # Nothing new: nothing logged.
    assert run(setup, path, "--syslog", "--now", "2026-12-04T15:01:00").stdout == ""
    assert received(server) == []

    done = run(setup, path, "--syslog", "--now", "2026-12-04T15:16:00")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert without_pid(received(server)) == [
        f"{MAIL_INFO}popbs: pruned 198.51.100.2 time={stamp(2026, 12, 4, 14, 45)}",
    ]


@pytest.mark.parametrize("how", ["environment", "config"])
def test_syslog_from_environment_or_config(
    tmp_path: Path, syslog: tuple[socket.socket, Path], how: str
) -> None:
    server, path = syslog
    setup = Setup(tmp_path)
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:45:00"))
    env = setup.env()
    args = ["--now", NOW]
    if how == "environment":
        env["POPBS_SYSLOG"] = "yes"
    else:
        config = tmp_path / "popbs.conf"
        config.write_text("[popbs]\nsyslog = yes\n")
        args += ["--config", str(config)]
    assert run(setup, path, *args, env=env).returncode == 0
    assert len(received(server)) == 1


def test_without_syslog_nothing_is_sent(
    tmp_path: Path, syslog: tuple[socket.socket, Path]
) -> None:
    server, path = syslog
    setup = Setup(tmp_path)
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:45:00"))
    assert run(setup, path, "--now", NOW).returncode == 0
    assert received(server) == []
    assert setup.query("198.51.100.2") is not None


def test_verbose_shows_the_audit_lines_on_stderr(
    tmp_path: Path, syslog: tuple[socket.socket, Path]
) -> None:
    server, path = syslog
    setup = Setup(tmp_path)
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:45:00"))
    done = run(setup, path, "--syslog", "-v", "--now", NOW)
    assert "popbs: added 198.51.100.2 user=alice server=dovecot time=" in done.stderr
    assert len(received(server)) == 1


def test_merge_and_prune_are_logged_without_a_user(
    tmp_path: Path, syslog: tuple[socket.socket, Path]
) -> None:
    server, path = syslog
    setup = Setup(tmp_path)
    env = setup.env()
    env["POPBS_SYSLOG_SOCKET"] = str(path)
    common = [*setup.settings(), "--syslog"]
    merge = [sys.executable, "-m", "popbs_tools", "merge", *common, "--now", NOW]
    subprocess.run(
        merge, input="198.51.100.9\n", text=True, env=env, check=True, timeout=60
    )
    prune = [sys.executable, "-m", "popbs_tools", "prune", *common]
    later = ["--now", "2026-12-04T16:00:00"]
    subprocess.run(prune + later, env=env, check=True, timeout=60)
    assert without_pid(received(server)) == [
        f"{MAIL_INFO}popbs: added 198.51.100.9 time={stamp(2026, 12, 4, 15, 0)}",
        f"{MAIL_INFO}popbs: pruned 198.51.100.9 time={stamp(2026, 12, 4, 15, 0)}",
    ]


def test_a_missing_system_log_is_one_warning_and_grants_go_on(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path)
    # A run with nothing to log says nothing, even without a system log:
    # under cron a warning would be a mail every minute.
    quiet = run(setup, tmp_path / "no-such-socket", "--syslog", "--now", NOW)
    assert (quiet.returncode, quiet.stderr) == (0, "")
    setup.append(
        dovecot_line("198.51.100.2", when="Dec  4 14:45:00"),
        dovecot_line("198.51.100.3", when="Dec  4 14:45:00"),
    )
    done = run(setup, tmp_path / "no-such-socket", "--syslog", "--now", NOW)
    assert done.returncode == 0
    assert done.stderr == (
        f"popbs: cannot reach the system log at {tmp_path / 'no-such-socket'}; "
        "audit lines lost\n"
    )
    assert setup.query("198.51.100.2") is not None


def test_hand_grants_revocations_and_publish_are_logged(
    tmp_path: Path, syslog: tuple[socket.socket, Path]
) -> None:
    server, path = syslog
    setup = Setup(tmp_path)
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:40:00"))
    env = setup.env()
    env["POPBS_SYSLOG_SOCKET"] = str(path)
    env["SUDO_USER"] = "carol"

    def popbs(command: str, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "popbs_tools", command, *setup.settings()]
            + [*args, "--syslog"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")

    popbs("sync", "--now", NOW)
    popbs("grant", "198.51.100.9", "--now", NOW)
    popbs("revoke", "198.51.100.9", "--now", "2026-12-04T15:01:00")
    popbs("publish", "--now", "2026-12-04T15:11:00")  # the 14:40 login expires
    assert without_pid(received(server)) == [
        f"{MAIL_INFO}popbs: added 198.51.100.2 user=alice server=dovecot "
        f"time={stamp(2026, 12, 4, 14, 40, 0)}",
        f"{MAIL_INFO}popbs: added 198.51.100.9 user=carol server=popbs-grant "
        f"time={stamp(2026, 12, 4, 15, 0, 0)}",
        f"{MAIL_INFO}popbs: pruned 198.51.100.9 time={stamp(2026, 12, 4, 15, 0, 0)}",
        f"{MAIL_INFO}popbs: pruned 198.51.100.2 time={stamp(2026, 12, 4, 14, 40, 0)}",
    ]


def test_escapes_read_one_way() -> None:
    from popbs_tools.audit import field

    assert field("a\u2028b") == "a\\u2028b"
    assert field("a b") == "a\\x20b"
    assert field("a\\x20b") == "a\\x5cx20b"
    assert field("a\U0001f600\nb") == "a\U0001f600\\x0ab"
    assert field("") == "-"
