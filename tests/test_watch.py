"""`popbs sync --watch`: publish within a second, hand over between cron minutes,
lose nothing when killed; on real files with the real postmap."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from popbs_tools import jobs, settings

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

ALICE = "198.51.100.1"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(tmp_path)
    setup.append(*noise(3))
    yield setup


class Runs:
    """popbs processes started by a test, each killed by its PID at the end."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "popbs_tools", *args]
        process = subprocess.Popen(
            [*command, *self.setup.settings()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.setup.env(),
        )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.communicate()


@pytest.fixture
def runs(setup: Setup) -> Iterator[Runs]:
    runs = Runs(setup)
    try:
        yield runs
    finally:
        runs.stop_all()


def now_line(ip: str) -> str:
    return dovecot_line(ip, when=time.strftime("%b %e %H:%M:%S"))


def wait_until(condition: object, timeout: float = 30.0) -> float:
    """Seconds until condition() is true; fail after `timeout`."""
    assert callable(condition)
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out"
        time.sleep(0.02)
    return time.monotonic() - start


def test_a_login_during_the_watch_is_published_without_a_new_run(
    setup: Setup, runs: Runs
) -> None:
    watching = runs.start("sync", "--watch", "30s")
    wait_until(setup.db.exists)
    setup.append(now_line(ALICE))
    wait_until(lambda: setup.query(ALICE) is not None)
    assert watching.poll() is None  # the same run, still watching


def test_the_next_minutes_run_takes_over_and_a_third_leaves(
    setup: Setup, runs: Runs
) -> None:
    first = runs.start("sync", "--watch", "60s")
    wait_until(setup.db.exists)

    second = runs.start("sync", "--watch", "60s")
    # The first hands over at its next poll, long before its 60 seconds.
    wait_until(lambda: first.poll() is not None, timeout=20)
    assert first.communicate() == ("", "")
    assert first.returncode == 0

    # The second watches now: a login is published without another run.
    setup.append(now_line(ALICE))
    wait_until(lambda: setup.query(ALICE) is not None)
    assert second.poll() is None

    # A run that finds one waiting already leaves at once, quietly.
    third = runs.start("sync", "--watch", "60s")
    fourth = runs.start("sync", "--watch", "60s")
    wait_until(lambda: third.poll() is not None or fourth.poll() is not None)
    left = third if third.poll() is not None else fourth
    assert (left.returncode, *left.communicate()) == (0, "", "")


def test_a_manual_command_during_the_watch_does_not_wait_out_the_watch(
    setup: Setup, runs: Runs
) -> None:
    watching = runs.start("sync", "--watch", "60s")
    wait_until(setup.db.exists)
    started = time.monotonic()
    done = setup.popbs("publish")
    assert (done.returncode, done.stderr) == (0, "")
    assert time.monotonic() - started < 30  # not the 60 s of the watch

    # The watching run took the lock back and watches on.
    setup.append(now_line(ALICE))
    wait_until(lambda: setup.query(ALICE) is not None)
    assert watching.poll() is None


def test_a_grant_during_the_watch_is_published_by_the_watch(
    setup: Setup, runs: Runs
) -> None:
    watching = runs.start("sync", "--watch", "60s")
    wait_until(setup.db.exists)
    done = setup.popbs("grant", ALICE)
    assert (done.returncode, done.stderr) == (0, "")
    assert setup.query(ALICE) is not None
    assert watching.poll() is None  # it applied the grant and goes on


def test_a_rotation_during_the_watch(setup: Setup, runs: Runs) -> None:
    runs.start("sync", "--watch", "60s")
    wait_until(setup.db.exists)
    setup.append(now_line("198.51.100.2"))
    setup.log.rename(setup.log.with_name("mail.log.1"))
    setup.append(now_line("198.51.100.3"), log=setup.log.with_name("mail.log.1"))
    setup.append(now_line("198.51.100.4"))
    for ip in ("198.51.100.2", "198.51.100.3", "198.51.100.4"):
        wait_until(lambda ip=ip: setup.query(ip) is not None)


def test_killed_watches_lose_nothing(setup: Setup, runs: Runs) -> None:
    """SIGKILL at random moments of watching runs; then one plain sync."""
    setup.append(now_line(ALICE))
    setup.popbs("sync", check=True)
    rng = random.Random(7)
    written = []
    for round_ in range(12):
        watching = runs.start("sync", "--watch", "60s")
        for n in range(3):
            ip = f"198.51.{100 + round_}.{n + 1}"
            setup.append(*noise(rng.randrange(200)), now_line(ip))
            written.append(ip)
            time.sleep(rng.uniform(0, 0.4))
        os.kill(watching.pid, signal.SIGKILL)
        watching.communicate()
        # The map reads, and what was published before the kill is there.
        assert setup.query(ALICE) is not None
    setup.popbs("sync", check=True)
    granted = setup.map.read_text()
    assert all(f"{ip} " in granted for ip in written)


def resolved(setup: Setup, *pairs: tuple[str, object]) -> settings.Settings:
    options: dict[str, object] = {name: None for name in ("config", *settings.KEYS)}
    options.update(
        log=tuple(str(p) for p in setup.logs),
        map=str(setup.map),
        map_type=setup.map_type,
        state_dir=str(setup.state_dir),
        never_grant=(),
        journal_file=(),
        disable=(),
    )
    options.update(dict(pairs))
    return settings.resolve(options, setup.env(), time.time())


def test_a_quiet_watch_still_prunes_what_expires(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A login 29 min 58 s old: its grant ends two seconds into the watch.
    now = time.time()
    setup.append(dovecot_line(ALICE, when=time.strftime("%b %e %H:%M:%S")))
    config = resolved(setup, ("now", str(int(now) + 30 * 60 - 2)))
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    seen = []

    def look() -> None:
        time.sleep(0.8)
        seen.append(setup.query(ALICE))

    looker = threading.Thread(target=look)
    looker.start()
    jobs.watch(config, length=5, poll=0.05, idle_pass=0.5)
    looker.join()
    assert seen[0] is not None  # granted at first
    assert setup.query(ALICE) is None
    assert setup.map.read_text().count("\n") == 1  # the header only


def test_a_wall_clock_step_changes_nothing_in_the_watch(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named fake: the machine's clock cannot be stepped in a test.

    time.time() jumps a day back and forth while watching; the watch ends on
    schedule and grants carry the time of their log line.
    """
    config = resolved(setup)
    real_time = time.time
    steps = iter([0.0, -86400.0, 86400.0] * 1000)
    monkeypatch.setattr(time, "time", lambda: real_time() + next(steps))
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))

    def log_later() -> None:
        time.sleep(0.5)
        setup.append(dovecot_line(ALICE, when=time.strftime("%b %e %H:%M:%S")))

    writer = threading.Thread(target=log_later)
    started = time.monotonic()
    writer.start()
    jobs.watch(config, length=3, poll=0.05)
    writer.join()
    assert 2.5 < time.monotonic() - started < 10
    assert setup.query(ALICE) is not None


def test_a_line_written_during_a_pass_is_seen_after_it(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A login logged while a pass runs is published by the next pass.

    The line is written at that exact moment by wrapping the real pass.
    """
    config = resolved(setup)
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    real_pass = jobs._sync_locked
    passes = []

    def pass_then_log(settings_now: settings.Settings) -> jobs.Change:
        change = real_pass(settings_now)
        if not passes:
            setup.append(now_line(ALICE))
        passes.append(change)
        return change

    monkeypatch.setattr(jobs, "_sync_locked", pass_then_log)
    jobs.watch(config, length=2, poll=0.05, idle_pass=600)
    assert len(passes) >= 2
    assert setup.query(ALICE) is not None


def test_a_backlog_cut_by_max_read_goes_on_at_once_while_watching(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    ips = [f"198.51.{100 + n // 250}.{n % 250 + 1}" for n in range(600)]
    stamp = time.strftime("%b %e %H:%M:%S")
    for ip in ips:
        setup.append(*noise(60, when=stamp), dovecot_line(ip, when=stamp))
    assert setup.log.stat().st_size > 2 << 20  # three reads of 1M or more
    config = resolved(setup, ("max_read", "1M"))
    monkeypatch.setenv("MAIL_CONFIG", str(setup.mail_config))
    # No new line and no idle pass: only the backlog can make it go on.
    jobs.watch(config, length=6, poll=0.05, idle_pass=600)
    granted = setup.map.read_text()
    assert all(f"{ip} " in granted for ip in ips)


def test_a_grant_during_a_max_read_backlog_does_not_wait_for_it(
    setup: Setup, runs: Runs
) -> None:
    stamp = time.strftime("%b %e %H:%M:%S")
    for n in range(4000):
        ip = f"10.1.{n // 250}.{n % 250 + 1}"
        setup.append(*noise(60, when=stamp), dovecot_line(ip, when=stamp))
    watching = runs.start("sync", "--watch", "60s", "--max-read", "64K")
    wait_until(setup.db.exists)
    done = setup.popbs("grant", ALICE)
    assert (done.returncode, done.stderr) == (0, "")
    assert setup.query(ALICE) is not None
    # Applied while the backlog was still being read, not after it.
    saved = json.loads((setup.state_dir / "state.json").read_text())
    assert saved["logs"][str(setup.log)]["offset"] < setup.log.stat().st_size
    assert watching.poll() is None
