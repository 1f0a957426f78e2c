"""SIGKILL at random points of `popbs sync`, and many syncs at once.

Afterwards the map still answers, no grant published before a kill is gone,
and the next run converges to what a run never killed would give.
"""

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = ("--now", "2026-12-04T15:00:00")
KILLS = 200


def sync_process(setup: Setup, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "popbs_tools", "sync", *setup.settings(), *NOW, *args],
        env=setup.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def grants_of(setup: Setup) -> dict[str, str]:
    lines = setup.map.read_text().splitlines()[1:] if setup.map.exists() else []
    return dict(line.split() for line in lines)


def test_killed_at_random_points_loses_nothing_and_converges(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "killed")
    reference = Setup(tmp_path / "reference")
    rng = random.Random(4)
    published: dict[str, str] = {}
    kills = 0

    for round_ in range(KILLS):
        lines = [
            *noise(rng.randrange(200)),
            dovecot_line(
                f"198.51.{100 + round_ // 200}.{round_ % 200 + 1}",
                when=f"Dec  4 14:{40 + round_ // 20:02d}:{round_ % 60:02d}",
            ),
        ]
        setup.append(*lines)
        reference.append(*lines)

        process = sync_process(setup)
        time.sleep(rng.uniform(0.0, 0.25))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)

        # The map is there and answers for everything published before.
        current = grants_of(setup)
        assert setup.db.exists() or not published
        for key, value in published.items():
            assert int(current.get(key, 0)) >= int(value), key
        if setup.db.exists():
            some = rng.choice(list(current)) if current else None
            if some is not None:
                assert setup.query(some) is not None
        published = current

    # Kills land at random moments; a fast machine finishes more runs first.
    assert kills >= KILLS // 5, f"only {kills} runs were killed mid-way"
    setup.popbs("sync", *NOW, check=True)
    reference.popbs("sync", *NOW, check=True)
    assert grants_of(setup) == grants_of(reference)
    assert len(grants_of(reference)) > 100
    # A kill may leave a temp file behind (removed by a later run once it is
    # ten minutes old); nothing else may appear beside the grant file and map.
    others = {p.name for p in setup.map_dir.iterdir()} - {"popbs", "popbs.db"}
    assert all(re.fullmatch(r"\.popbs\.[a-z0-9_]{8}(\.db)?", name) for name in others)
    print(f"{kills} of {KILLS} runs killed mid-way")


def test_twenty_syncs_at_once_give_the_result_of_one(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "many")
    reference = Setup(tmp_path / "one")
    lines = [
        dovecot_line(f"198.51.100.{n}", when=f"Dec  4 14:{30 + n % 29:02d}:00")
        for n in range(1, 120)
    ]
    setup.append(*lines)
    reference.append(*lines)

    processes = [sync_process(setup) for _ in range(20)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [p.returncode for p in processes] == [0] * 20
    assert all(out == ("", "") for out in outputs)

    reference.popbs("sync", *NOW, check=True)
    assert grants_of(setup) == grants_of(reference)
    assert setup.state_dir.joinpath("state.json").read_text().count('"offset"') == 1
    # last-run.json: how the last run ended, for popbs status.
    assert sorted(os.listdir(setup.state_dir)) in (
        ["last-run.json", "lock", "state.json"],
        ["last-run.json", "lock", "state.json", "state.json.prev"],
    )
