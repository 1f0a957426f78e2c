"""At the terminal: a progress line on a real pty, never without one; columns; JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = "2026-12-04T15:00:00"
CLEAR = b"\r\x1b[K"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path)
    # About 8 MiB: eight of the scanner's 1 MiB reads, so several offsets.
    filler = "Dec  4 14:30:00 mail postfix/smtpd[4000]: connect from x[192.0.2.1]\n"
    with open(made.log, "w") as handle:
        handle.write(dovecot_line("198.51.100.1", when="Dec  4 14:40:00") + "\n")
        handle.write(filler * 120_000)
        handle.write(dovecot_line("198.51.100.2", when="Dec  4 14:50:00") + "\n")
    return made


def command(setup: Setup, name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "popbs_tools", name, *setup.settings(), *args]


def environment(setup: Setup) -> dict[str, str]:
    env = setup.env()
    # Draw at once: the log is read far quicker than the usual two seconds.
    env["POPBS_PROGRESS_DELAY"] = "0"
    return env


def on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run with stderr on a new pty; return the exit status, stdout and what
    the terminal received."""
    master, slave = os.openpty()
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
        )
    finally:
        os.close(slave)
    received = []
    with os.fdopen(master, "rb", buffering=0) as terminal:
        while True:
            try:
                data = terminal.read(65536)
            except OSError:  # EIO: the last writer closed its end
                break
            if not data:
                break
            received.append(data)
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.stdout.close()
    return process.wait(timeout=120), stdout, b"".join(received)


def test_scan_shows_progress_at_a_terminal(setup: Setup) -> None:
    args = command(setup, "scan", "--no-state", "--from-start")
    code, stdout, terminal = on_terminal(args, environment(setup))
    assert code == 0
    assert stdout.decode().splitlines()[1].startswith("198.51.100.2 ")
    assert f"\r\x1b[Kpopbs: reading {setup.log} [".encode() in terminal
    assert b"] 100% 8/8 MiB" in terminal
    # Wiped at the end: the terminal is left as it was.
    assert terminal.endswith(CLEAR)


def test_sync_shows_progress_and_still_prints_nothing_else(setup: Setup) -> None:
    code, stdout, terminal = on_terminal(
        command(setup, "sync", "--now", NOW), environment(setup)
    )
    assert (code, stdout) == (0, b"")
    assert b"popbs: reading" in terminal and terminal.endswith(CLEAR)
    assert setup.query("198.51.100.2") is not None


def test_scan_of_a_named_file_shows_progress(setup: Setup) -> None:
    args = command(setup, "scan", str(setup.log))
    code, _, terminal = on_terminal(args, environment(setup))
    assert code == 0
    assert b"] 100% 8/8 MiB" in terminal


def test_quiet_draws_nothing(setup: Setup) -> None:
    args = command(setup, "scan", "--no-state", "--from-start", "-q")
    code, _, terminal = on_terminal(args, environment(setup))
    assert (code, terminal) == (0, b"")


@pytest.mark.parametrize("name", ["sync", "scan"])
def test_no_terminal_no_progress(setup: Setup, name: str) -> None:
    # As under cron: stderr is a pipe.
    done = subprocess.run(
        command(setup, name, "--now", NOW),
        capture_output=True,
        env=environment(setup),
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, b"")


def test_list_aligns_its_columns(setup: Setup) -> None:
    setup.popbs(
        "merge",
        "--now",
        NOW,
        stdin="198.51.100.7 1796396400\n2001:db8::1234:5678 1796396100\n",
        check=True,
    )
    lines = setup.popbs("list", "--now", NOW, check=True).stdout.splitlines()
    assert len(lines) == 2
    # The time column starts at the same place after an IPv4 and an IPv6 key.
    assert len({line.index("2026-") for line in lines}) == 1


def test_list_and_scan_speak_json(setup: Setup) -> None:
    setup.popbs("sync", "--now", NOW, check=True)
    listed = setup.popbs("list", "--json", "--now", NOW, check=True).stdout
    records = [json.loads(line) for line in listed.splitlines()]
    assert [record["ip"] for record in records] == ["198.51.100.1", "198.51.100.2"]
    assert set(records[0]) == {"ip", "time", "expires", "left"}

    scanned = setup.popbs("scan", "--json", str(setup.log), check=True).stdout
    logins = [json.loads(line) for line in scanned.splitlines()]
    assert [login["ip"] for login in logins] == ["198.51.100.1", "198.51.100.2"]
