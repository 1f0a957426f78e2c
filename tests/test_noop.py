"""A cron run that finds nothing new costs nothing: no postmap, no postconf, no
write (issue 5). Real postmap and postconf, behind wrappers that count calls."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import POSTMAP, SBIN, Setup, dovecot_line, noise

POSTCONF = shutil.which("postconf", path=f"{os.environ.get('PATH', '')}:{SBIN}")

pytestmark = pytest.mark.skipif(
    POSTMAP is None or POSTCONF is None, reason="Postfix's postmap/postconf missing"
)


class Counted:
    """postconf and postmap first on PATH, each noting its calls in a file."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.bin.mkdir()
        for name, real in (("postconf", POSTCONF), ("postmap", POSTMAP)):
            script = self.bin / name
            script.write_text(
                f'#!/bin/sh\necho "$*" >> "{root / name}.calls"\nexec "{real}" "$@"\n'
            )
            script.chmod(0o755)
        self.root = root

    def calls(self, name: str) -> int:
        path = self.root / f"{name}.calls"
        return len(path.read_text().splitlines()) if path.exists() else 0


def sync(setup: Setup, counted: Counted) -> subprocess.CompletedProcess[str]:
    # No --map-type: the map type comes from postconf when needed.
    args = ["--map", str(setup.map), "--state-dir", str(setup.state_dir)]
    args += ["--postmap", str(counted.bin / "postmap")]
    env = setup.env()
    env["PATH"] = f"{counted.bin}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools", "sync", "--log", str(setup.log), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    return done


def files(setup: Setup) -> dict[str, tuple[int, int]]:
    paths = [setup.map, *setup.map_dir.glob("popbs.*"), setup.state_dir / "state.json"]
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in paths}


def test_no_new_line_asks_postconf_nothing_and_writes_nothing(tmp_path: Path) -> None:
    setup, counted = Setup(tmp_path), Counted(tmp_path)
    now = time.strftime("%b %e %H:%M:%S", time.localtime(time.time() - 60))
    setup.append(*noise(3), dovecot_line("198.51.100.1", when=now))
    sync(setup, counted)
    assert counted.calls("postmap") == 1 and counted.calls("postconf") >= 1
    before, postconf_before = files(setup), counted.calls("postconf")
    assert "popbs.db" in before

    sync(setup, counted)

    assert counted.calls("postmap") == 1
    assert counted.calls("postconf") == postconf_before
    assert files(setup) == before


def test_a_main_cf_newer_than_the_map_is_asked_about(tmp_path: Path) -> None:
    setup, counted = Setup(tmp_path), Counted(tmp_path)
    setup.append(*noise(3))
    sync(setup, counted)
    postconf_before = counted.calls("postconf")

    # main.cf (an hour old, see Setup) changed after the map was built: the
    # default map type may have changed with it, so postconf must be asked.
    two_hours_ago = time.time() - 7200
    for path in (setup.map, setup.db):
        os.utime(path, (two_hours_ago, two_hours_ago))
    sync(setup, counted)

    assert counted.calls("postconf") > postconf_before
    assert counted.calls("postmap") == 1  # the map is still current


def test_merge_with_publish_builds_the_map_in_one_run(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    now = int(time.time())
    lines = f"198.51.100.9 {now - 60}\n2001:db8::9 {now - 30}\n"
    setup.popbs("merge", "--publish", stdin=lines, check=True)
    assert setup.query("198.51.100.9") == str(now - 60)
    assert setup.query("2001:db8::9") == str(now - 30)

    # Without --publish the map stays as it was until a publish or a sync.
    setup.popbs("merge", stdin="198.51.100.10\n", check=True)
    assert setup.query("198.51.100.10") is None
