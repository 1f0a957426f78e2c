"""`popbs sync` on real files with the real postmap."""

import fcntl
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")


def local(*parts: int) -> int:
    return int(time.mktime(datetime(*parts).timetuple()))


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_first_run_without_logins_creates_an_empty_table(setup: Setup) -> None:
    setup.append(*noise(3))
    done = setup.popbs("sync", "--now", "2026-12-04T15:00:00")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert setup.db.exists()
    assert setup.map.read_text().startswith("# popbs-tools")
    assert setup.query("198.51.100.7") is None


def test_first_run_keeps_only_logins_within_ttl(setup: Setup) -> None:
    setup.append(
        dovecot_line("198.51.100.1", when="Dec  4 14:00:00"),
        dovecot_line("198.51.100.2", when="Dec  4 14:45:00"),
        dovecot_line("2001:db8::2", when="Dec  4 14:50:00"),
    )
    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    assert setup.query("198.51.100.1") is None
    assert setup.query("198.51.100.2") == str(local(2026, 12, 4, 14, 45, 0))
    assert setup.query("2001:db8::2") == str(local(2026, 12, 4, 14, 50, 0))


def test_grant_time_is_the_line_time_and_newest_wins(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:55:00"))
    setup.popbs("sync", "--now", "2026-12-04T15:01:00", check=True)
    assert setup.map.read_text().splitlines()[1:] == [
        f"198.51.100.1 {local(2026, 12, 4, 14, 55, 0)}"
    ]


def test_unchanged_run_calls_no_postmap_and_writes_nothing(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    before = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (setup.map, setup.db, setup.state_dir / "state.json")
    }

    # A postmap that would fail proves it is not called.
    setup.append(*noise(5))
    done = setup.popbs(
        "sync", "--now", "2026-12-04T15:01:00", "--postmap", "/bin/false"
    )
    assert (done.returncode, done.stderr) == (0, "")
    after = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (setup.map, setup.db)
    }
    assert after == {k: v for k, v in before.items() if k != "state.json"}


def test_expired_grant_is_pruned_and_published(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    assert setup.query("198.51.100.1") is not None

    setup.popbs("sync", "--now", "2026-12-04T15:20:00", check=True)
    assert setup.query("198.51.100.1") is None
    assert (
        setup.popbs("check", "198.51.100.1", "--now", "2026-12-04T15:20:00").returncode
        == 1
    )


def test_lock_held_means_exit_0_and_nothing_touched(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    setup.state_dir.mkdir(mode=0o700)
    with open(setup.state_dir / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        quiet = setup.popbs("sync", "--now", "2026-12-04T15:00:00")
        verbose = setup.popbs("sync", "--now", "2026-12-04T15:00:00", "-v")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert verbose.returncode == 0
    assert "holds the lock" in verbose.stderr
    assert not setup.map.exists()
    assert sorted(os.listdir(setup.state_dir)) == ["lock"]

    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    assert setup.query("198.51.100.1") is not None


def test_killed_before_state_save_converges(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    # As if the run had died after publishing but before saving its offsets.
    (setup.state_dir / "state.json").unlink()
    setup.popbs("sync", "--now", "2026-12-04T15:00:00", check=True)
    assert setup.map.read_text().count("198.51.100.1") == 1


def test_scan_merge_publish_pipeline(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
    scan = setup.popbs("scan", "--json", "--now", "2026-12-04T15:00:00", check=True)
    setup.popbs("merge", "--now", "2026-12-04T15:00:00", stdin=scan.stdout, check=True)
    assert not setup.db.exists()  # merge writes the grant file only
    setup.popbs("publish", "--now", "2026-12-04T15:00:00", check=True)
    assert setup.query("198.51.100.1") == str(local(2026, 12, 4, 14, 50, 0))


def test_merge_without_time_means_now_and_list_shows_it(setup: Setup) -> None:
    setup.popbs("merge", "--now", "1796396400", stdin="198.51.100.9\n", check=True)
    listed = setup.popbs("list", "--json", "--now", "1796396460", check=True)
    assert '"ip": "198.51.100.9"' in listed.stdout
    assert '"time": 1796396400' in listed.stdout
    assert '"left": 1740' in listed.stdout
    check = setup.popbs("check", "198.51.100.9", "--now", "1796396460")
    assert check.returncode == 0 and "may relay until" in check.stdout


def test_publish_prunes_and_drops_what_may_never_be_granted(setup: Setup) -> None:
    setup.map.write_text(
        "# hand-edited\n"
        "198.51.100.1 1000\n"  # long expired
        "127.0.0.1 1796396000\n"  # loopback
        "198.51.100.2 9999999999\n"  # a grant until 2286
        "198.51.100.3 1796396000\n"
    )
    done = setup.popbs("publish", "--now", "1796396400")
    assert done.returncode == 0
    assert "dropping 127.0.0.1" in done.stderr
    assert setup.query("198.51.100.1") is None
    assert setup.query("127.0.0.1") is None
    assert setup.query("198.51.100.2") == "1796396400"
    assert setup.query("198.51.100.3") == "1796396000"
