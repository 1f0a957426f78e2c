"""Bounded work: checkpoints inside a long read, and --max-read per run."""

import json
from pathlib import Path

import pytest

from popbs_tools import scanner

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = ("--now", "2026-12-04T15:00:00")


def big_log(setup: Setup, logins: int) -> list[str]:
    ips = [f"198.51.{100 + n // 250}.{n % 250 + 1}" for n in range(logins)]
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
