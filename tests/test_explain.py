"""`popbs explain`: one answer a line, and the exit status says if any grants."""

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from popbs_tools.cli import popbs

NOW = "2026-12-05T00:00:00+00:00"
GRANT = (
    "2026-12-04T15:23:01+0900 mail dovecot[1327]: imap-login: Login: "
    "user=<erin@example.org>, method=PLAIN, rip=198.51.100.140, lip=192.0.2.10, "
    "mpid=9010, TLS, session=<0Qe2pX0QkNLLqAEB>"
)
GRANT_TIME = int(datetime.fromisoformat("2026-12-04T15:23:01+09:00").timestamp())


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "popbs.conf"
    path.write_text("[popbs]\n")
    return path


def explain(config: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(
        popbs,
        ["explain", "--config", str(config), "--now", NOW, *args],
        input=stdin,
        # No system main.cf is read: Postfix's mynetworks is not asked.
        env={
            "POPBS_NEVER_GRANT": None,
            "POPBS_DISABLE": None,
            "POPBS_TRUST_MYNETWORKS": "no",
        },
    )
    return result.exit_code, result.output


def test_a_granting_line_names_its_rule_and_what_it_read(config: Path) -> None:
    code, output = explain(config, GRANT)
    assert code == 0
    assert output.startswith(
        "grant 198.51.100.140: dovecot imap login of 'erin@example.org' from "
        "198.51.100.140 (rule dovecot, session 0Qe2pX0QkNLLqAEB) "
        f"at {GRANT_TIME} ("
    )
    assert output.count("\n") == 1


def test_a_yearless_time_is_guessed_against_now(config: Path) -> None:
    # A month after --now cannot be this year's: it is last January.
    line = (
        "Jan  5 10:00:00 mail dovecot: pop3-login: Login: user=<ann>, "
        "method=PLAIN, rip=198.51.100.7, lip=192.0.2.10"
    )
    expected = int(time.mktime((2026, 1, 5, 10, 0, 0, 0, 0, -1)))
    code, output = explain(config, line)
    assert code == 0
    assert f" at {expected} (2026-01-05 10:00:00 " in output


@pytest.mark.parametrize(
    ("line", "answer"),
    [
        pytest.param(
            "garbage without any header Login: user=<x>, rip=203.0.113.80",
            "no grant: not a log line popbs understands; it reads syslog",
            id="not-a-log-line",
        ),
        pytest.param(
            "Dec  4 17:50:02 mail sshd[4732]: Accepted password for alice from "
            "203.0.113.251 port 52000 ssh2",
            "no grant: no rule for program tag 'sshd'",
            id="no-rule-for-tag",
        ),
        pytest.param(
            "May  7 13:40:14 mail imapd[26772]: imap service init from 203.0.113.58",
            "no grant: rules of courier, cyrus, uw read program tag 'imapd', but "
            "none matches this message",
            id="no-rule-matches",
        ),
        pytest.param(
            "Jun 13 16:30:54 mail dovecot: imap-login: Disconnected (auth failed, 2 "
            "attempts): user=<bob>, method=PLAIN, rip=203.0.113.187, lip=192.0.2.10",
            "no grant: rule dovecot-failed matched a failed login: Disconnected "
            "(auth failed, 2 attempts); user 'bob'; address 203.0.113.187 at ",
            id="failed-login",
        ),
        pytest.param(
            "Dec  4 15:46:03 mail dovecot: imap-login: Login: user=<root>, "
            "method=PLAIN, rip=::1, lip=::1, mpid=5054, secured",
            "no grant: ::1 is never granted (loopback address): dovecot imap login "
            "of 'root' from ::1 (rule dovecot)",
            id="loopback",
        ),
        pytest.param(
            "Dec  4 15:46:05 mail dovecot: imap-login: Login: user=<zed>, "
            "method=PLAIN, rip=240.0.0.1, lip=192.0.2.10",
            "no grant: 240.0.0.1 is never granted (reserved address)",
            id="reserved",
        ),
        pytest.param(
            "Dec  4 15:46:06 mail dovecot: imap-login: Login: user=<zed>, "
            "method=PLAIN, rip=198.051.100.76, lip=192.0.2.10, mpid=5057",
            "no grant: rule dovecot matched, but '198.051.100.76' is not a valid "
            "address",
            id="invalid-address",
        ),
        pytest.param(
            "Dec  4 15:46:02 mail dovecot: imap-login: Login: user=<x, "
            "rip=6.6.6.6>, method=PLAIN, rip=198.51.100.75, lip=192.0.2.10",
            "no grant: rule dovecot matched, but 'rip=' occurs more than once: "
            "ambiguous",
            id="ambiguous",
        ),
        pytest.param(
            "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140",
            "no grant: address line: popa3d process 9001 serves 198.51.100.140 "
            "(rule popa3d-session) at ",
            id="address-line",
        ),
        pytest.param(
            "Dec  4 17:20:01 mail popa3d[9001]: Authentication passed for alice",
            "no grant: popa3d pop3 login of 'alice' without its address, process "
            "9001 (rule popa3d) at ",
            id="login-without-address",
        ),
        pytest.param(
            "Dec  4 15:46:08 mail dovecot: imap(alice)<5120><k9a2kk0MaOsgAQ24>: "
            "Disconnected: Logged out in=10 out=20",
            "no grant: end of session: dovecot imap session of 'alice' (rule "
            "dovecot-logout, session k9a2kk0MaOsgAQ24, pid 5120) at ",
            id="end-of-session",
        ),
        pytest.param(
            "@400000006b12f19d075bcd15 tcpserver: end 12008 status 0",
            "no grant: end of session of process 12008 (rule tcpserver-end) at ",
            id="end-of-process",
        ),
        pytest.param(
            "Dec 32 25:61:61 mail dovecot: imap-login: Login: user=<x>, "
            "method=PLAIN, rip=203.0.113.81, lip=192.0.2.10",
            "no grant: the line's time cannot be resolved, so a scan skips: dovecot "
            "imap login of 'x' from 203.0.113.81 (rule dovecot)",
            id="no-usable-time",
        ),
    ],
)
def test_why_a_line_grants_nothing(config: Path, line: str, answer: str) -> None:
    code, output = explain(config, line)
    assert (code, output[: len(answer)]) == (1, answer)


def test_lines_of_another_process_cannot_be_paired_here(config: Path) -> None:
    lines = (
        "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140\n"
        "Dec  4 17:20:01 mail popa3d[9001]: Authentication passed for alice\n"
    )
    code, output = explain(config, stdin=lines)
    assert code == 1
    assert all(
        "cannot pair them: scan the log" in line for line in output.split("\n")[:2]
    )


def test_a_never_grant_network_is_named(config: Path) -> None:
    code, output = explain(config, "--never-grant", "198.51.100.0/24", GRANT)
    assert code == 1
    assert output.startswith(
        "no grant: 198.51.100.140 is never granted (in never-grant network "
        "198.51.100.0/24)"
    )


def test_a_switched_off_server_is_named(config: Path) -> None:
    code, output = explain(config, "--disable", "dovecot", GRANT)
    assert (code, output) == (
        1,
        "no grant: server dovecot is switched off (--disable, disable =); its rule "
        "dovecot matches this line\n",
    )
    code, output = explain(config, "--disable", "courier", GRANT)
    assert code == 0


@pytest.mark.parametrize("args", [(), ("-",)], ids=["no-argument", "dash"])
def test_standard_input_is_answered_line_by_line_with_numbers(
    config: Path, args: tuple[str, ...]
) -> None:
    stdin = "garbage\n" + GRANT + "\nDec  4 17:50:02 mail sshd[4732]: x\n"
    code, output = explain(config, *args, stdin=stdin)
    first, second, third = output.splitlines()
    assert code == 0
    assert first.startswith("1: no grant: not a log line")
    assert second.startswith("2: grant 198.51.100.140: ")
    assert third == "3: no grant: no rule for program tag 'sshd'"


def test_exit_1_when_no_line_grants(config: Path) -> None:
    code, output = explain(config, stdin="garbage\nmore garbage\n")
    assert code == 1
    assert output.splitlines()[1].startswith("2: no grant: not a log line")


def test_the_real_command_reads_bytes_that_are_not_utf8(config: Path) -> None:
    stdin = b"\xff\xfe garbage\n" + GRANT.encode() + b"\n"
    command = [sys.executable, "-m", "popbs_tools", "explain", "--config", str(config)]
    done = subprocess.run(
        command, input=stdin, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout.decode().splitlines()[1].startswith("2: grant 198.51.100.140")


def test_help_documents_the_exit_status() -> None:
    result = CliRunner().invoke(popbs, ["explain", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exits 0 if at least one line would grant, 1 if none." in text
