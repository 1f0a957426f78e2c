"""`popbs grant` and `popbs revoke`, with the real postmap, alone and during a sync."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_sessions import login

from popbs_tools import manual, state

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

ALICE = "198.51.100.1"
BOB = "198.51.100.2"
T0 = "2026-12-04T15:00:00"


def at(clock: str) -> list[str]:
    return ["--now", f"2026-12-04T{clock}"]


def epoch(clock: str) -> int:
    return int(time.mktime(time.strptime(f"2026-12-04 {clock}", "%Y-%m-%d %H:%M:%S")))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    setup = Setup(tmp_path)
    setup.append(*noise(2))
    return setup


@contextmanager
def lock_held(setup: Setup) -> Iterator[None]:
    """Hold the run lock, as a long sync would."""
    setup.state_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(setup.state_dir / state.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start(setup: Setup, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "popbs_tools", *args, *setup.settings()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=setup.env(),
    )


def queued(setup: Setup) -> list[Path]:
    directory = setup.state_dir / manual.REQUESTS_DIR
    return sorted(directory.glob(f"*{manual.SUFFIX}")) if directory.exists() else []


def wait_for_queue(setup: Setup, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while not queued(setup):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the request was never queued"
        time.sleep(0.02)


def test_grant_publishes_at_once(setup: Setup) -> None:
    done = setup.popbs("grant", ALICE, *at("15:00:00"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert setup.query(ALICE) == str(epoch("15:00:00"))
    assert setup.popbs("check", ALICE, *at("15:29:00")).returncode == 0
    assert setup.popbs("check", ALICE, *at("15:30:00")).returncode == 1
    assert queued(setup) == []


def test_a_grant_longer_than_the_ttl_is_kept_up_by_sync(setup: Setup) -> None:
    setup.popbs("grant", ALICE, "--ttl", "2h", *at("15:00:00"), check=True)
    checked = setup.popbs("check", ALICE, *at("15:01:00"))
    assert "until 2026-12-04 17:00:00" in checked.stdout

    # Cron runs with the usual 30 minute TTL; the grant outlives it.
    for clock in ("15:20:00", "15:40:00", "16:00:00", "16:20:00", "16:40:00"):
        setup.popbs("sync", *at(clock), check=True)
        assert setup.query(ALICE) is not None, clock
    setup.popbs("sync", *at("16:59:00"), check=True)
    assert setup.query(ALICE) is not None
    setup.popbs("sync", *at("17:00:00"), check=True)
    assert setup.query(ALICE) is None


def test_a_short_grant_ends_early_and_prunes_nobody_else(setup: Setup) -> None:
    setup.append(dovecot_line(BOB, when="Dec  4 14:50:00"))
    setup.popbs("sync", *at("15:00:00"), check=True)

    setup.popbs("grant", ALICE, "--ttl", "5m", *at("15:00:00"), check=True)
    # Bob's grant, ten minutes old, was not pruned by the grant's 5 minutes.
    assert setup.query(BOB) == str(epoch("14:50:00"))
    assert setup.query(ALICE) is not None

    setup.popbs("sync", *at("15:04:59"), check=True)
    assert setup.query(ALICE) is not None
    setup.popbs("sync", *at("15:05:00"), check=True)
    assert setup.query(ALICE) is None
    assert setup.query(BOB) is not None


def test_revoke_removes_now_and_only_a_new_login_brings_back(setup: Setup) -> None:
    setup.append(dovecot_line(ALICE, when="Dec  4 14:55:00"))
    setup.popbs("sync", *at("15:00:00"), check=True)
    assert setup.query(ALICE) is not None

    done = setup.popbs("revoke", ALICE, *at("15:01:00"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert setup.query(ALICE) is None

    # A login logged before the revocation, read late, does not count; nor
    # does reading the whole log again after --reset.
    setup.append(dovecot_line(ALICE, when="Dec  4 15:00:30"))
    setup.popbs("sync", *at("15:02:00"), check=True)
    assert setup.query(ALICE) is None
    setup.popbs("sync", "--reset", *at("15:03:00"), check=True)
    assert setup.query(ALICE) is None

    setup.append(dovecot_line(ALICE, when="Dec  4 15:04:00"))
    setup.popbs("sync", *at("15:05:00"), check=True)
    assert setup.query(ALICE) == str(epoch("15:04:00"))


def test_revoke_ends_an_open_sessions_hold(setup: Setup) -> None:
    # This Dovecot logs session ends with a session id (an earlier session
    # shows it), so Alice's open IMAP session would keep her grant.
    setup.append(
        login("198.51.100.9", "EarlierSess01", "14:00:00"),
        "Dec  4 14:00:05 mail dovecot: imap(alice)<5101><EarlierSess01>: "
        "Disconnected: Logged out in=210 out=1520",
        login(ALICE, "AliceSessn001", "14:50:00"),
    )
    setup.popbs("sync", *at("15:00:00"), check=True)
    setup.popbs("revoke", ALICE, *at("15:01:00"), check=True)
    setup.popbs("sync", *at("15:30:00"), check=True)
    assert setup.query(ALICE) is None


def test_grant_after_revoke_grants_again(setup: Setup) -> None:
    setup.popbs("grant", ALICE, *at("15:00:00"), check=True)
    setup.popbs("revoke", ALICE, *at("15:01:00"), check=True)
    setup.popbs("grant", ALICE, *at("15:02:00"), check=True)
    setup.popbs("sync", *at("15:03:00"), check=True)
    assert setup.query(ALICE) == str(epoch("15:02:00"))


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("192.0.2.5", "never-grant"),
        ("198.51.100.300", "not an IP address"),
        ("alice", "not an IP address"),
    ],
)
def test_grant_refuses_what_may_never_relay(
    setup: Setup, address: str, reason: str
) -> None:
    done = setup.popbs(
        "grant", address, "--never-grant", "192.0.2.0/24", *at("15:00:00")
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("popbs: error: ") and reason in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert not setup.map.exists() and queued(setup) == []


def test_a_grant_made_during_a_sync_waits_and_publishes(setup: Setup) -> None:
    with lock_held(setup):
        granting = start(setup, "grant", ALICE)
        wait_for_queue(setup, granting)
        time.sleep(0.5)
        assert granting.poll() is None  # still waiting for the lock
        assert setup.query(ALICE) is None
    out, err = granting.communicate(timeout=60)
    assert (granting.returncode, out, err) == (0, "", "")
    assert setup.query(ALICE) is not None
    assert queued(setup) == []


def test_a_queued_grant_survives_its_killed_command(setup: Setup) -> None:
    with lock_held(setup):
        granting = start(setup, "grant", ALICE)
        wait_for_queue(setup, granting)
        granting.send_signal(signal.SIGKILL)
        granting.wait(timeout=30)
    assert setup.query(ALICE) is None

    # The next sync, which cron starts anyway, applies it.
    done = setup.popbs("sync")
    assert (done.returncode, done.stderr) == (0, "")
    assert setup.query(ALICE) is not None
    assert queued(setup) == []


def test_grants_during_real_syncs_are_never_lost(setup: Setup) -> None:
    """Grants and syncs started together, in every order: every grant lands."""
    setup.append(*noise(200_000))
    addresses = [f"198.51.100.{n}" for n in range(10, 20)]
    setup.popbs("sync", check=True)
    for n, address in enumerate(addresses):
        setup.append(*noise(20_000))
        syncing = start(setup, "sync", "--reset")
        time.sleep(0.03 * n)
        granting = start(setup, "grant", address)
        for process in (syncing, granting):
            out, err = process.communicate(timeout=120)
            assert (process.returncode, out, err) == (0, "", ""), (address, err)
    assert all(setup.query(address) is not None for address in addresses)
    assert queued(setup) == []


def test_state_written_before_hand_grants_existed_still_reads(setup: Setup) -> None:
    setup.popbs("sync", check=True)
    path = setup.state_dir / state.STATE_FILE
    document = json.loads(path.read_text())
    for key in ("manual", "revoked", "checksum"):
        document.pop(key)
    document["checksum"] = state.checksum_of(document)
    path.write_text(json.dumps(document))

    done = setup.popbs("grant", ALICE)
    assert (done.returncode, done.stderr) == (0, "")
    assert not (setup.state_dir / f"{state.STATE_FILE}.corrupt").exists()
    assert ALICE in json.loads(path.read_text())["manual"]


def test_merge_honours_a_revocation_unless_the_login_is_newer(setup: Setup) -> None:
    setup.popbs("grant", ALICE, *at("15:00:00"), check=True)
    setup.popbs("revoke", ALICE, *at("15:01:00"), check=True)

    # An old login fed by hand (scan of an old log) does not bring it back.
    stale = f"{ALICE} {epoch('15:00:30')}\n"
    setup.popbs("merge", *at("15:02:00"), stdin=stale, check=True)
    setup.popbs("publish", *at("15:02:00"), check=True)
    assert setup.query(ALICE) is None

    # A login after the revocation does, and lifts it.
    fresh = f"{ALICE} {epoch('15:01:30')}\n"
    setup.popbs("merge", *at("15:02:00"), stdin=fresh, check=True)
    setup.popbs("sync", *at("15:03:00"), check=True)
    assert setup.query(ALICE) == str(epoch("15:01:30"))


def test_a_hand_grant_leaves_when_the_policy_tightens(setup: Setup) -> None:
    setup.popbs("grant", ALICE, "--ttl", "2h", *at("15:00:00"), check=True)
    done = setup.popbs("sync", "--never-grant", "198.51.100.0/24", *at("15:01:00"))
    assert done.returncode == 0
    assert setup.query(ALICE) is None
    # And it stays gone when the setting is dropped again: the grant was let go.
    setup.popbs("sync", *at("15:02:00"), check=True)
    assert setup.query(ALICE) is None


def test_a_session_begun_before_a_revocation_does_not_bring_it_back(
    setup: Setup,
) -> None:
    setup.append(
        login("198.51.100.9", "EarlierSess01", "14:00:00"),
        "Dec  4 14:00:05 mail dovecot: imap(alice)<5101><EarlierSess01>: "
        "Disconnected: Logged out in=210 out=1520",
    )
    setup.popbs("sync", *at("14:30:00"), check=True)
    # Logged in before the revocation, read only after it; logged out after.
    setup.append(login(ALICE, "AliceSessn001", "14:50:00"))
    setup.popbs("revoke", ALICE, *at("15:00:00"), check=True)
    setup.append(
        "Dec  4 15:05:00 mail dovecot: imap(alice)<5101><AliceSessn001>: "
        "Disconnected: Logged out in=210 out=1520"
    )
    setup.popbs("sync", *at("15:06:00"), check=True)
    assert setup.query(ALICE) is None


def test_a_second_grant_replaces_the_first(setup: Setup) -> None:
    setup.popbs("grant", ALICE, "--ttl", "2h", *at("15:00:00"), check=True)
    setup.popbs("grant", ALICE, "--ttl", "10m", *at("15:01:00"), check=True)
    assert (
        "until 2026-12-04 15:11:00"
        in setup.popbs("check", ALICE, *at("15:02:00")).stdout
    )
    setup.popbs("sync", *at("15:11:00"), check=True)
    assert setup.query(ALICE) is None


def write_request(setup: Setup, name: str, record: object) -> Path:
    directory = setup.state_dir / manual.REQUESTS_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / name
    path.write_text(json.dumps(record) if not isinstance(record, str) else record)
    return path


@pytest.mark.parametrize(
    "record",
    [
        {"action": "grant", "ip": "0.0.0.0/0", "time": 1, "until": 2},
        {"action": "grant", "ip": "1.2.3.4 OK\nfoo", "time": 1, "until": 2},
        {"action": "grant", "ip": "198.51.100.9", "time": 1, "until": 1e300},
        '{"action": "grant", "ip": "198.51.100.9", "time": 1, "until": NaN}',
        {"action": "grant", "ip": "198.51.100.9", "time": 1, "until": True},
        "not json at all",
    ],
    ids=["network", "newline", "forever", "nan", "bool", "garbage"],
)
def test_a_bad_request_is_set_aside_and_syncs_go_on(
    setup: Setup, record: object
) -> None:
    setup.popbs("sync", *at("15:00:00"), check=True)
    path = write_request(setup, "1.request", record)
    done = setup.popbs("sync", *at("15:01:00"))
    assert done.returncode == 0, done.stderr
    assert "ignoring request" in done.stderr
    assert not path.exists() and path.with_name("1.request.bad").exists()
    assert "198.51.100.9" not in setup.map.read_text()


def test_a_fifo_request_does_not_hang_the_sync(setup: Setup) -> None:
    setup.popbs("sync", *at("15:00:00"), check=True)
    directory = setup.state_dir / manual.REQUESTS_DIR
    directory.mkdir(mode=0o700)
    os.mkfifo(directory / "1.request")
    done = setup.popbs("sync", *at("15:01:00"))
    assert done.returncode == 0 and "not a regular file" in done.stderr


def test_a_queued_grant_of_a_refused_address_is_not_granted(setup: Setup) -> None:
    setup.popbs("sync", *at("15:00:00"), check=True)
    now = epoch("15:00:00")
    for n, ip in enumerate(["127.0.0.1", "192.0.2.9"]):
        record = {"action": "grant", "ip": ip, "time": now, "until": now + 600}
        write_request(setup, f"{n}.request", record)
    done = setup.popbs("sync", "--never-grant", "192.0.2.0/24", *at("15:01:00"))
    assert done.returncode == 0
    assert "127.0.0.1" not in setup.map.read_text()
    assert "192.0.2.9" not in setup.map.read_text()


def test_requests_of_another_user_are_not_trusted(setup: Setup) -> None:
    setup.popbs("sync", *at("15:00:00"), check=True)
    now = epoch("15:00:00")
    record = {"action": "grant", "ip": "198.51.100.66", "time": now, "until": now + 600}
    path = write_request(setup, "1.request", record)
    os.chown(path, 65534, 65534)
    done = setup.popbs("sync", *at("15:01:00"))
    assert done.returncode == 0 and "owned by uid 65534" in done.stderr
    assert setup.query("198.51.100.66") is None

    # A requests folder others may write to is refused outright.
    path.with_name("1.request.bad").unlink()
    path.parent.chmod(0o1733)
    done = setup.popbs("sync", *at("15:02:00"))
    assert done.returncode == 5 and "writable by other users" in done.stderr


def test_a_state_directory_of_another_user_is_refused(setup: Setup) -> None:
    setup.state_dir.mkdir(mode=0o700)
    os.chown(setup.state_dir, 65534, 65534)
    done = setup.popbs("sync", *at("15:00:00"))
    assert done.returncode == 5 and "owned by uid 65534" in done.stderr
    assert not setup.map.exists()


def test_reset_waits_for_a_running_sync(setup: Setup) -> None:
    setup.append(dovecot_line(ALICE, when="Dec  4 14:55:00"))
    setup.popbs("sync", *at("15:00:00"), check=True)
    with lock_held(setup):
        resetting = start(setup, "sync", "--reset", *at("15:01:00"))
        time.sleep(0.5)
        assert resetting.poll() is None  # waiting, not gone quietly
    out, err = resetting.communicate(timeout=60)
    assert (resetting.returncode, out, err) == (0, "", "")


def test_a_session_read_after_its_revocation_never_relays_again(setup: Setup) -> None:
    """The login is logged before the revocation but read after it; the
    session stays open past the revocation's own expiry."""
    setup.append(
        login("198.51.100.9", "EarlierSess01", "14:00:00"),
        "Dec  4 14:00:05 mail dovecot: imap(alice)<5101><EarlierSess01>: "
        "Disconnected: Logged out in=210 out=1520",
    )
    setup.popbs("sync", *at("14:00:10"), check=True)
    setup.append(login(ALICE, "AliceSessn001", "14:00:20"))
    setup.popbs("revoke", ALICE, *at("14:01:00"), check=True)
    for clock in ("14:01:10", "14:32:10", "14:40:00", "15:00:00"):
        setup.popbs("sync", *at(clock), check=True)
        assert setup.query(ALICE) is None, clock


def test_merge_of_a_session_end_that_began_before_a_revocation(setup: Setup) -> None:
    setup.popbs("revoke", ALICE, *at("15:00:00"), check=True)
    record = {
        "ip": ALICE,
        "time": epoch("15:05:00"),
        "since": epoch("14:55:00"),
        "user": "alice",
        "server": "dovecot",
    }
    setup.popbs(
        "merge", "--publish", *at("15:06:00"), stdin=json.dumps(record), check=True
    )
    assert setup.query(ALICE) is None


def test_a_short_hand_grant_never_shortens_a_login(setup: Setup) -> None:
    setup.append(dovecot_line(ALICE, when="Dec  4 15:00:00"))
    setup.popbs("sync", *at("15:00:30"), check=True)
    setup.popbs("grant", ALICE, "--ttl", "5m", *at("15:01:00"), check=True)
    setup.popbs("sync", *at("15:10:00"), check=True)
    assert setup.query(ALICE) == str(epoch("15:00:00"))


def test_a_grant_cut_by_max_grants_is_an_error(setup: Setup) -> None:
    setup.append(
        *(dovecot_line(f"198.51.100.{n}", when="Dec  4 15:00:00") for n in (5, 6))
    )
    setup.popbs("sync", "--max-grants", "2", *at("15:00:30"), check=True)
    done = setup.popbs(
        "grant", ALICE, "--ttl", "5m", "--max-grants", "2", *at("15:01:00")
    )
    assert done.returncode == 4 and "--max-grants" in done.stderr
