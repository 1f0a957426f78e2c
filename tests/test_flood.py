"""A flood of logins: 100 000 distinct addresses within one minute."""

import subprocess
import sys
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

FLOOD = 100_000


@pytest.fixture(scope="module")
def flood_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    log = tmp_path_factory.mktemp("flood") / "mail.log"
    with open(log, "w") as handle:
        for n in range(FLOOD):
            handle.write(
                f"Dec  4 14:59:{n * 60 // FLOOD:02d} mail dovecot: imap-login: "
                f"Login: user=<u{n}>, method=PLAIN, rip=10.{n >> 16}.{n >> 8 & 255}."
                f"{n & 255}, lip=192.0.2.10, mpid={n}, TLS\n"
            )
    return log


def run_sync(setup: Setup, *args: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run sync under a fresh parent whose only children are popbs's, and
    return the peak RSS (KiB) among them, which pytest's other children
    cannot raise."""
    command = [sys.executable, "-m", "popbs_tools", "sync", *setup.settings(), *args]
    launcher = (
        "import resource, subprocess, sys\n"
        f"done = subprocess.run({command!r})\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(peak, file=sys.stderr)\n"
        "sys.exit(done.returncode)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher],
        capture_output=True,
        text=True,
        env=setup.env(),
        timeout=300,
    )
    *messages, peak = done.stderr.splitlines()
    done.stderr = "".join(line + "\n" for line in messages)
    return done, int(peak)


def test_all_grants_of_a_flood_are_published(tmp_path: Path, flood_log: Path) -> None:
    setup = Setup(tmp_path, logs=[flood_log])
    done, peak_kib = run_sync(setup, "--now", "2026-12-04T15:00:00")
    assert (done.returncode, done.stderr) == (0, "")
    # Bounded by the addresses kept, not the log: measured about 80 MiB.
    print(f"peak RSS of a sync of {FLOOD} logins: {peak_kib // 1024} MiB")
    assert peak_kib < 200 * 1024
    assert len(setup.map.read_text().splitlines()) == FLOOD + 1
    assert setup.query("10.1.134.159") is not None  # n = 99999


def test_max_grants_keeps_the_newest_and_warns(tmp_path: Path, flood_log: Path) -> None:
    setup = Setup(tmp_path, logs=[flood_log])
    done, _ = run_sync(setup, "--now", "2026-12-04T15:00:00", "--max-grants", "1000")
    assert done.returncode == 0
    assert "the 99000 oldest were dropped" in done.stderr
    keys = [line.split() for line in setup.map.read_text().splitlines()[1:]]
    assert len(keys) == 1000
    # The newest logins (second 59 of the minute) are the ones kept.
    assert min(int(time) for _, time in keys) == max(int(time) for _, time in keys)
