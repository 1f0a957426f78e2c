"""Logins whose address an earlier line of the same process gave."""

from pathlib import Path

import pytest

from popbs_tools.addresses import Policy
from popbs_tools.correlate import Sessions
from popbs_tools.recognise import Login, Recogniser, Role, Step
from popbs_tools.scan import Found, Interpreter, scan_files
from popbs_tools.scanner import Source

NOW = 1796400000.0  # 2026-12-04, after every line here


def scan(*lines: str, source: str = "mail.log") -> list[Found]:
    interpreter = Interpreter(Recogniser(), Policy(), NOW)
    feed = [(Source(source, NOW), line.encode()) for line in lines]
    return list(interpreter.logins(feed))


def granted(*lines: str) -> list[tuple[str, str]]:
    return [(found.ip, found.user) for found in scan(*lines)]


# Per server: the address line, then the login line of the same process.
PAIRS = [
    pytest.param(
        "@400000006b12f19a075bcd15 tcpserver: pid 12345 from 2001:db8::7",
        "@400000006b12f1c2075bcd15 qmail-popup: pid 12345 Accept::AUTH::User "
        "P:POP3 S:2001:db8::7:client.example.org ?~ 'alice'",
        ("2001:db8::7", "alice"),
        id="tcpserver-qmail-popup",
    ),
    pytest.param(
        "@400000006b12f19a075bcd15 tcpserver: ok 12345 "
        "mail.example.org:192.0.2.10:110 :203.0.113.7::51234",
        "@400000006b12f1c2075bcd15 qmail-popup: pid 12345 Accept::AUTH::User "
        "P:POP3 S:unknown:unknown ?~ 'alice'",
        ("203.0.113.7", "alice"),
        id="tcpserver-ok-line",
    ),
    pytest.param(
        "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140",
        "Dec  4 17:20:03 mail popa3d[9001]: Authentication passed for alice",
        ("198.51.100.140", "alice"),
        id="popa3d",
    ),
    pytest.param(
        "Dec  4 17:22:00 mail spop3d[4101]: connect from client.example.org "
        "(203.0.113.150)",
        "Dec  4 17:22:01 mail spop3d[4101]: user bob authenticated",
        ("203.0.113.150", "bob"),
        id="solid-pop3d",
    ),
    pytest.param(
        "Dec  4 17:24:01 mail gnu-pop3d[5002]: connect from 198.51.100.171",
        "Dec  4 17:24:02 mail gnu-pop3d[5002]: User 'bob' logged in with mailbox "
        "'/var/mail/bob' (3 msgs)",
        ("198.51.100.171", "bob"),
        id="gnu-pop3d",
    ),
    pytest.param(
        "Dec  4 17:24:01 mail imap4d[5003]: Connect from 203.0.113.172",
        "Dec  4 17:24:02 mail imap4d[5003]: User `carol' logged in (source: system)",
        ("203.0.113.172", "carol"),
        id="gnu-imap4d",
    ),
    pytest.param(
        "Dec  4 17:30:00 mail vm-pop3d[8101]: Connect from 203.0.113.200",
        "Dec  4 17:30:01 mail vm-pop3d[8101]: User 'dave' of 'example.org' logged in",
        ("203.0.113.200", "dave"),
        id="vm-pop3d",
    ),
]


@pytest.mark.parametrize(("address", "login", "expect"), PAIRS)
def test_address_on_an_earlier_line_grants(
    address: str, login: str, expect: tuple[str, str]
) -> None:
    assert granted(address, login) == [expect]
    assert granted(login) == []
    assert granted(login, address) == []


def test_an_unrelated_pid_does_not_pair() -> None:
    assert (
        granted(
            "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140",
            "Dec  4 17:20:03 mail popa3d[9002]: Authentication passed for alice",
        )
        == []
    )


def test_other_host_log_or_server_does_not_pair() -> None:
    address = "Dec  4 17:30:00 mail vm-pop3d[8101]: Connect from 203.0.113.200"
    other_host = "Dec  4 17:30:01 mx2 vm-pop3d[8101]: User 'dave' logged in"
    other_server = "Dec  4 17:30:01 mail popa3d[8101]: Authentication passed for dave"
    assert granted(address, other_host) == []
    assert granted(address, other_server) == []
    interpreter = Interpreter(Recogniser(), Policy(), NOW)
    lines = [
        (Source("mail.log", NOW), address.encode()),
        (
            Source("other.log", NOW),
            b"Dec  4 17:30:01 mail vm-pop3d[8101]: User 'dave' logged in",
        ),
    ]
    assert list(interpreter.logins(lines)) == []


def test_an_address_pairs_with_one_login_only() -> None:
    assert granted(
        "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140",
        "Dec  4 17:20:03 mail popa3d[9001]: Authentication passed for alice",
        "Dec  4 17:50:03 mail popa3d[9001]: Authentication passed for mallory",
    ) == [("198.51.100.140", "alice")]


def test_the_end_of_a_process_forgets_its_address() -> None:
    assert (
        granted(
            "@400000006b12f19a075bcd15 tcpserver: pid 12345 from 203.0.113.7",
            "@400000006b12f19b075bcd15 tcpserver: end 12345 status 0",
            "@400000006b12f19c075bcd15 qmail-popup: pid 12345 Accept::AUTH::User "
            "P:POP3 S:2001:db8::7:h ?~ 'alice'",
        )
        == []
    )


def test_a_session_without_an_address_forgets_the_last_one() -> None:
    # Mailutils 3.x: the pid of an old session that logged its address comes
    # round again, and this session logs none.
    assert (
        granted(
            "Dec  4 17:24:01 mail gnu-pop3d[5002]: connect from 198.51.100.171",
            "Dec  4 17:26:00 mail gnu-pop3d[5002]: incoming connection opened",
            "Dec  4 17:26:02 mail gnu-pop3d[5002]: user `bob' logged in with mailbox "
            "`/var/mail/bob' (3 messages)",
        )
        == []
    )


def test_a_failed_login_ends_the_session() -> None:
    assert (
        granted(
            "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140",
            "Dec  4 17:20:03 mail popa3d[9001]: Authentication failed for alice",
            "Dec  4 17:20:09 mail popa3d[9001]: Authentication passed for alice",
        )
        == []
    )


def test_lines_far_apart_in_time_do_not_pair() -> None:
    address = "Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140"
    assert (
        granted(
            address, "Dec  4 17:41:00 mail popa3d[9001]: Authentication passed for a"
        )
        == []
    )
    assert granted(
        address, "Dec  4 17:39:59 mail popa3d[9001]: Authentication passed for a"
    ) == [("198.51.100.140", "a")]


def test_a_paired_address_is_still_subject_to_the_policy() -> None:
    assert (
        granted(
            "Dec  4 17:20:00 mail popa3d[9001]: Session from 127.0.0.1",
            "Dec  4 17:20:03 mail popa3d[9001]: Authentication passed for alice",
        )
        == []
    )


def test_lines_without_a_pid_do_not_pair() -> None:
    assert (
        granted(
            "Dec  4 17:20:00 mail popa3d: Session from 198.51.100.140",
            "Dec  4 17:20:03 mail popa3d: Authentication passed for alice",
        )
        == []
    )


def test_the_table_keeps_a_bounded_number_of_processes() -> None:
    sessions = Sessions(limit=2)
    for pid in ("1", "2", "3"):
        sessions.apply(("log", "", "popa3d", pid), address_step(pid), 100.0)
    assert len(sessions) == 2
    assert sessions.apply(("log", "", "popa3d", "1"), login_step("1"), 101.0) is None
    paired = sessions.apply(("log", "", "popa3d", "3"), login_step("3"), 101.0)
    assert paired is not None and paired.ip == "198.51.100.3"


def test_an_entry_does_not_outlive_its_window() -> None:
    sessions = Sessions()
    key = ("log", "", "popa3d", "7")
    sessions.apply(key, address_step("7"), 100.0)
    assert sessions.apply(key, login_step("7", window=60.0), 161.0) is None
    assert len(sessions) == 0


def address_step(pid: str) -> Step:
    return Step(Role.ADDRESS, "popa3d", pid, ip=f"198.51.100.{pid}")


def login_step(pid: str, window: float = 600.0) -> Step:
    login = Login("", "alice", "popa3d", "pop3", "popa3d")
    return Step(Role.SESSION_LOGIN, "popa3d", pid, login=login, window=window)


@pytest.mark.parametrize(("address", "login", "expect"), PAIRS)
def test_both_lines_reach_the_interpreter(
    address: str, login: str, expect: tuple[str, str]
) -> None:
    # The scanner hands on only lines holding a marker.
    markers = Recogniser().markers
    for line in (address, login):
        assert any(marker in line.encode() for marker in markers)


def test_pairs_through_a_scanned_file(tmp_path: Path) -> None:
    log = tmp_path / "current"
    log.write_text(
        "@400000006b12f199075bcd15 tcpserver: status: 1/40\n"
        "@400000006b12f19a075bcd15 tcpserver: pid 12345 from 2001:db8::7\n"
        "@400000006b12f19a075bcd16 tcpserver: ok 12345 h:192.0.2.10:110 "
        ":2001:db8::7::51234\n"
        "@400000006b12f19b075bcd15 tcpserver: pid 12346 from 203.0.113.9\n"
        "@400000006b12f19c075bcd15 tcpserver: end 12346 status 256\n"
        "@400000006b12f1c2075bcd15 qmail-popup: pid 12345 Accept::AUTH::User "
        "P:POP3 S:2001:db8::7:h ?~ 'alice'\n"
        "@400000006b12f1c2075bcd16 tcpserver: end 12345 status 0\n"
    )
    interpreter = Interpreter(Recogniser(), Policy(), NOW)
    found = list(scan_files(interpreter, [str(log)]))
    assert [(one.ip, one.user, one.server) for one in found] == [
        ("2001:db8::7", "alice", "qmail-pop3d")
    ]


def test_pairs_across_two_runs_and_a_rotation(tmp_path: Path) -> None:
    # cron often runs between the address line and the login line; logrotate
    # may too. The address waits in the state for its login.
    from helpers import Setup

    setup = Setup(tmp_path)
    now = ("--now", "2026-12-04T17:30:00")
    setup.append("Dec  4 17:20:00 mail popa3d[9001]: Session from 198.51.100.140")
    assert setup.popbs("scan", *now, check=True).stdout == ""

    setup.log.rename(setup.log.with_name("mail.log.1"))
    setup.append("Dec  4 17:20:01 mail popa3d[9001]: Authentication passed for alice")
    found = setup.popbs("scan", *now, check=True).stdout.split()
    assert found[:3] == ["198.51.100.140", found[1], "alice"]

    # Paired once: the address is gone from the state.
    setup.append("Dec  4 17:20:02 mail popa3d[9001]: Authentication passed for eve")
    assert setup.popbs("scan", *now, check=True).stdout == ""
