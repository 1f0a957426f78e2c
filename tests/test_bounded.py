"""Bounded work: checkpoints inside a long read, and --max-read per run."""

import json
from pathlib import Path

import pytest

from popbs_tools import scanner

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = ("--now", "2026-12-04T15:00:00")


def big_log(setup: Setup, logins: int, first: int = 0) -> list[str]:
    numbers = range(first, first + logins)
    ips = [f"198.51.{100 + n // 250}.{n % 250 + 1}" for n in numbers]
    for ip in ips:
        setup.append(*noise(60, when="Dec  4 14:40:00"), dovecot_line(ip))
    return ips


def test_checkpoints_fall_on_line_ends_and_hold(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    big_log(setup, 40)
    data = setup.log.read_bytes()
    reader = scanner.LogScan(setup.log, None, (b"Login: ",), checkpoint_every=1)
    checkpoints = [
        item for _, item in reader.lines() if isinstance(item, scanner.Checkpoint)
    ]
    assert checkpoints  # one per chunk read
    for checkpoint in checkpoints:
        offset = checkpoint.position.offset
        assert data[offset - 1 : offset] == b"\n"
        with open(setup.log, "rb") as handle:
            assert scanner.holds(handle, checkpoint.position)


def test_max_read_spreads_a_backlog_over_runs_and_loses_nothing(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path)
    ips = big_log(setup, 800)
    size = setup.log.stat().st_size
    assert size > 3 << 20

    offsets = []
    for _ in range(10):
        setup.popbs("sync", *NOW, "--max-read", "1M", check=True)
        state = json.loads((setup.state_dir / "state.json").read_text())
        offsets.append(state["logs"][str(setup.log)]["offset"])
        if offsets[-1] == size:
            break
    assert offsets[0] < size  # the first run stopped early
    assert offsets == sorted(offsets) and offsets[-1] == size
    granted = [line.split()[0] for line in setup.map.read_text().splitlines()[1:]]
    assert sorted(granted) == sorted(ips)


def test_late_lines_after_a_rotation_survive_a_max_read_stop(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    big_log(setup, 50)
    setup.popbs("sync", *NOW, check=True)
    setup.log.rename(setup.log.with_name("mail.log.1"))
    # A new generation (its first line differs), more than one --max-read.
    setup.append("Dec  4 14:41:00 mail syslogd: restart")
    ips = big_log(setup, 800)
    setup.popbs("sync", *NOW, "--max-read", "1M", check=True)
    state = json.loads((setup.state_dir / "state.json").read_text())
    assert str(setup.log) in state["finished"]

    setup.append(dovecot_line("203.0.113.7"), log=setup.log.with_name("mail.log.1"))
    for _ in range(6):
        setup.popbs("sync", *NOW, "--max-read", "1M", check=True)
    granted = setup.map.read_text()
    assert "203.0.113.7 " in granted
    assert all(f"{ip} " in granted for ip in ips)


def test_a_killed_sync_leaves_no_child_behind(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    setup = Setup(tmp_path)
    line = (
        "Dec  4 14:40:12 mail postfix/smtpd[4000]: connect from unknown"
        "[192.0.2.1] Login: x\n"
    )
    with open(setup.log, "w") as handle:
        handle.write(line * (80 * 1024 * 1024 // len(line)))
    process = subprocess.Popen(
        [sys.executable, "-m", "popbs_tools", "sync", *setup.settings(), *NOW],
        env=setup.env(),
        stderr=subprocess.DEVNULL,
    )
    children: list[int] = []
    deadline = time.monotonic() + 20
    while not children and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
        task = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        children = (
            [int(pid) for pid in task.read_text().split()] if task.exists() else []
        )
    assert children, "the big read did not fork"
    process.send_signal(signal.SIGKILL)
    process.wait()
    for _ in range(100):
        if not any(Path(f"/proc/{pid}").exists() for pid in children):
            break
        time.sleep(0.02)
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == []
    # The lock is free: the next run does its work.
    done = setup.popbs("sync", *NOW, "-v")
    assert "holds the lock" not in done.stderr


def test_a_rotated_backlog_is_read_in_bounded_steps(tmp_path: Path) -> None:
    """Days of downtime: the unread rest sits in rotated generations."""
    setup = Setup(tmp_path)
    setup.append(*noise(10))
    setup.popbs("sync", *NOW, check=True)
    older = big_log(setup, 400)
    setup.log.rename(setup.log.with_name("mail.log.2"))
    setup.append("Dec  4 14:40:00 mail syslogd: restart")
    middle = big_log(setup, 400, first=400)
    setup.log.rename(setup.log.with_name("mail.log.1"))
    setup.append("Dec  4 14:40:01 mail syslogd: restart")
    newest = big_log(setup, 100, first=800)

    inodes = []
    for _ in range(12):
        setup.popbs("sync", *NOW, "--max-read", "1M", check=True)
        state = json.loads((setup.state_dir / "state.json").read_text())
        position = state["logs"][str(setup.log)]
        inodes.append(position["ino"])
        if position["ino"] == setup.log.stat().st_ino and position["offset"] == (
            setup.log.stat().st_size
        ):
            break
    # The first run stopped inside the oldest rotated generation, and later
    # runs went on from there rather than start over.
    assert inodes[0] == setup.log.with_name("mail.log.2").stat().st_ino
    assert setup.log.with_name("mail.log.1").stat().st_ino in inodes
    granted = [line.split()[0] for line in setup.map.read_text().splitlines()[1:]]
    assert sorted(granted) == sorted(older + middle + newest)
