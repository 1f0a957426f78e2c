"""A full disk, made for real with a small tmpfs: the old map and state stay."""

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = ("--now", "2026-12-04T15:00:00")


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "256k") -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size={size},mode=0755",
            "tmpfs",
            str(directory),
        ],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    return filler


def one_line_error(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("popbs: error: "), done.stderr
    return lines[0]


def test_full_map_disk_keeps_the_old_map_and_loses_no_login(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    with small_tmpfs(setup.map_dir):
        setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
        setup.popbs("sync", *NOW, check=True)
        before = {p.name: p.read_bytes() for p in setup.map_dir.iterdir()}
        state_before = (setup.state_dir / "state.json").read_bytes()

        filler = fill(setup.map_dir)
        setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:55:00"))
        line = one_line_error(setup.popbs("sync", *NOW), 4)
        assert "No space left on device" in line
        after = {p.name: p.read_bytes() for p in setup.map_dir.iterdir()}
        assert {k: v for k, v in after.items() if k != "filler"} == before
        assert setup.query("198.51.100.1") is not None
        assert (setup.state_dir / "state.json").read_bytes() == state_before

        filler.unlink()
        setup.popbs("sync", *NOW, check=True)
        assert setup.query("198.51.100.2") is not None


def test_full_state_disk_exits_non_zero_and_the_next_run_catches_up(
    tmp_path: Path,
) -> None:
    setup = Setup(tmp_path)
    with small_tmpfs(setup.state_dir):
        setup.state_dir.chmod(0o700)
        setup.append(dovecot_line("198.51.100.1", when="Dec  4 14:50:00"))
        setup.popbs("sync", *NOW, check=True)
        state_before = (setup.state_dir / "state.json").read_bytes()

        filler = fill(setup.state_dir)
        setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:55:00"))
        line = one_line_error(setup.popbs("sync", *NOW), 5)
        assert "cannot save state" in line
        assert (setup.state_dir / "state.json").read_bytes() == state_before
        # The map was published before the state: the login is granted, and
        # reading its line again on the next run changes nothing.
        assert setup.query("198.51.100.2") is not None

        filler.unlink()
        setup.popbs("sync", *NOW, check=True)
        assert setup.map.read_text().count("198.51.100.2") == 1
