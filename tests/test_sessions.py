"""Long IMAP sessions keep their grant until the TTL has passed after logout."""

from pathlib import Path

import pytest

from helpers import POSTMAP, Setup

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

ALICE = "198.51.100.1"


def login(ip: str, session: str, when: str, service: str = "imap") -> str:
    return (
        f"Dec  4 {when} mail dovecot: {service}-login: Login: user=<alice>, "
        f"method=PLAIN, rip={ip}, lip=192.0.2.10, mpid=51{session[-2:]}, TLS, "
        f"session=<{session}>"
    )


def logout(session: str, when: str, service: str = "imap") -> str:
    return (
        f"Dec  4 {when} mail dovecot: {service}(alice)<51{session[-2:]}><{session}>: "
        "Disconnected: Logged out in=210 out=1520"
    )


def sync(setup: Setup, now: str, *args: str) -> None:
    setup.popbs("sync", "--now", f"2026-12-04T{now}", *args, check=True)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    setup = Setup(tmp_path)
    # An earlier session, begun and ended: it shows that this Dovecot's end
    # lines carry the session id, so sessions can be followed to their end.
    setup.append(
        login("198.51.100.9", "EarlierSess01", "08:00:00"),
        logout("EarlierSess01", "08:00:05"),
    )
    return setup


def test_open_session_keeps_its_grant_past_the_ttl(setup: Setup) -> None:
    setup.append(login(ALICE, "AliceSessn001", "09:00:00"))
    sync(setup, "09:10:00")
    assert setup.query(ALICE) is not None

    sync(setup, "09:40:00")  # 40 minutes after the login, still connected
    assert setup.query(ALICE) is not None

    setup.append(logout("AliceSessn001", "10:00:00"))
    sync(setup, "10:05:00")
    assert setup.map.read_text().count(ALICE) == 1
    sync(setup, "10:29:00")
    assert setup.query(ALICE) is not None
    sync(setup, "10:31:00")  # the TTL has passed since the logout
    assert setup.query(ALICE) is None


def test_refresh_does_not_republish_every_minute(setup: Setup) -> None:
    setup.append(login(ALICE, "AliceSessn001", "09:00:00"))
    sync(setup, "09:10:00")
    sync(setup, "09:20:00")
    first = setup.db.stat().st_mtime_ns
    sync(setup, "09:21:00")
    sync(setup, "09:22:00")
    assert setup.db.stat().st_mtime_ns == first


def test_session_without_end_stops_at_the_bound(setup: Setup) -> None:
    setup.append(login(ALICE, "AliceSessn001", "09:00:00"))
    sync(setup, "09:10:00", "--max-session", "1h")
    sync(setup, "09:50:00", "--max-session", "1h")
    assert setup.query(ALICE) is not None
    sync(setup, "10:10:00", "--max-session", "1h")  # bound passed: no refresh
    sync(setup, "10:21:00", "--max-session", "1h")
    assert setup.query(ALICE) is None


def test_pop3_sessions_are_not_followed(setup: Setup) -> None:
    setup.append(login(ALICE, "AliceSessn001", "09:00:00", service="pop3"))
    sync(setup, "09:10:00")
    sync(setup, "09:40:00")
    assert setup.query(ALICE) is None


def test_sessions_are_not_followed_before_an_end_line_was_seen(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.append(login(ALICE, "AliceSessn001", "09:00:00"))
    sync(setup, "09:10:00")
    sync(setup, "09:40:00")
    assert setup.query(ALICE) is None


def test_end_lines_without_a_key_teach_nothing(tmp_path: Path) -> None:
    # Dovecot 2.2's default mail_log_prefix names the user alone: its end
    # lines cannot be matched to a login, so no session is followed.
    setup = Setup(tmp_path)
    setup.append(
        "Dec  4 08:00:05 mail dovecot: imap(alice): Disconnected: Logged out in=1",
        "Dec  4 09:00:00 mail dovecot: imap-login: Login: user=<alice>, "
        f"method=PLAIN, rip={ALICE}, lip=192.0.2.10, mpid=77, TLS",
    )
    sync(setup, "09:10:00")
    sync(setup, "09:40:00")
    assert setup.query(ALICE) is None


def test_the_loggers_pid_does_not_join_sessions(setup: Setup) -> None:
    # Logins without a session id, under the pid of Dovecot's log process
    # that every session shares, even once end lines keyed by pid were seen:
    # not followed, and not merged into one.
    no_session = (
        "Dec  4 09:00:00 mail dovecot[1327]: imap-login: Login: user=<{u}>, "
        "method=PLAIN, rip={ip}, lip=192.0.2.10, mpid=77, TLS"
    )
    setup.append(
        "Dec  4 08:30:00 mail dovecot[1327]: imap(zed)<4242>: Disconnected: "
        "Logged out in=1 out=2",
        no_session.format(u="alice", ip=ALICE),
        no_session.format(u="bob", ip="198.51.100.2"),
    )
    sync(setup, "09:10:00")
    sync(setup, "09:40:00")
    assert setup.query(ALICE) is None
    assert setup.query("198.51.100.2") is None
    assert '"sessions": {}' in (setup.state_dir / "state.json").read_text()


def test_open_sessions_are_bounded() -> None:
    from popbs_tools import tracking
    from popbs_tools.logline import Record
    from popbs_tools.recognise import Login

    tracker = tracking.Tracker({}, {"mail|dovecot|session"})
    record = Record(None, "mail", "dovecot", "", "")
    for n in range(tracking.MAX_OPEN + 10):
        login = Login(
            f"198.51.{n // 250 % 250}.{n % 250 + 1}",
            "u",
            "dovecot",
            "imap",
            "dovecot",
            f"s{n}",
        )
        tracker.opened(record, login, "", float(n))
    assert len(tracker.sessions) == tracking.MAX_OPEN
    assert min(s.since for s in tracker.sessions.values()) == 10.0

    # Sessions of a source not followed are kept only to learn from: a few.
    unfollowed = tracking.Tracker({}, set())
    for n in range(5000):
        login = Login("198.51.100.1", "u", "dovecot", "imap", "dovecot", f"s{n}")
        unfollowed.opened(record, login, "", float(n))
    assert len(unfollowed.sessions) == tracking.MAX_UNFOLLOWED


def test_an_open_session_never_brings_back_a_never_grant_address(setup: Setup) -> None:
    setup.append(login(ALICE, "AliceSessn001", "09:00:00"))
    sync(setup, "09:10:00")
    never = ("--never-grant", "198.51.100.0/24")
    sync(setup, "09:40:00", *never)
    assert setup.query(ALICE) is None
    setup.append(logout("AliceSessn001", "09:50:00"))
    sync(setup, "09:55:00", *never)
    assert setup.query(ALICE) is None


def test_a_server_switched_off_stops_refreshing_its_sessions(setup: Setup) -> None:
    setup.append(login(ALICE, "AliceSessn001", "09:00:00"))
    sync(setup, "09:10:00")
    sync(setup, "09:40:00", "--disable", "dovecot")
    assert setup.query(ALICE) is None


def test_a_stray_end_line_of_another_host_teaches_nothing(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    setup.append(
        logout("StraySessn002", "08:00:00").replace(" mail ", " hostA "),
        login(ALICE, "AliceSessn001", "09:00:00").replace(" mail ", " hostB "),
        "Dec  4 09:05:00 hostB dovecot: imap(alice): Disconnected: Logged out in=1",
    )
    sync(setup, "09:10:00")
    sync(setup, "09:40:00")
    assert setup.query(ALICE) is None


def test_a_reused_pid_does_not_lend_its_logout_to_the_old_client(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path)
    setup.append(
        "Dec  4 09:00:00 mail imapd[50]: Login user=z host=h [198.51.100.50]",
        "Dec  4 09:01:00 mail imapd[50]: Logout user=z host=h [198.51.100.50]",
        "Dec  4 10:10:00 mail imapd[55]: Login user=old host=h [198.51.100.5]",
        # The old session's end was lost; the pid is reused.
        "Dec  4 10:20:00 mail imapd[55]: Login user=new host=h [198.51.100.6]",
        "Dec  4 10:21:00 mail imapd[55]: Logout user=new host=h [198.51.100.6]",
    )
    sync(setup, "10:22:00")
    grants = dict(line.split() for line in setup.map.read_text().splitlines()[1:])
    assert grants["198.51.100.5"] == str(local_time(10, 10))
    assert grants["198.51.100.6"] == str(local_time(10, 21))
    sync(setup, "10:45:00")
    assert setup.query("198.51.100.5") is None  # not refreshed: its end was lost


def local_time(hour: int, minute: int) -> int:
    import time
    from datetime import datetime

    return int(time.mktime(datetime(2026, 12, 4, hour, minute).timetuple()))
