"""`popbs sync --dry-run`: the change a sync would make, with nothing written."""

import os
from pathlib import Path

import pytest

from helpers import POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = "2026-12-04T15:00:00"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `root`, with its inode, size and modification time."""
    found = {}
    for directory, _, names in os.walk(root):
        for name in names:
            info = os.stat(os.path.join(directory, name))
            key = os.path.relpath(os.path.join(directory, name), root)
            found[key] = (info.st_ino, info.st_size, info.st_mtime_ns)
    return found


def test_first_run_shows_the_grants_and_writes_nothing(setup: Setup) -> None:
    setup.append(
        dovecot_line("198.51.100.2", when="Dec  4 14:45:00"),
        dovecot_line("2001:db8::2", when="Dec  4 14:50:00"),
        dovecot_line("198.51.100.1", when="Dec  4 14:00:00"),  # expired
    )
    before = snapshot(setup.root)
    done = setup.popbs("sync", "--dry-run", "--now", NOW)
    assert (done.returncode, done.stdout, done.stderr) == (
        1,
        "+ 198.51.100.2\n+ 2001:db8::2\n",
        "",
    )
    # No grant file, map, state directory or lock: not a byte written.
    assert snapshot(setup.root) == before
    assert not setup.state_dir.exists()


def test_nothing_to_do_exits_0_silently(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:45:00"))
    setup.popbs("sync", "--now", NOW, check=True)
    before = snapshot(setup.root)
    done = setup.popbs("sync", "--dry-run", "--now", "2026-12-04T15:01:00")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert snapshot(setup.root) == before


def test_added_pruned_and_renewed_match_what_sync_then_does(setup: Setup) -> None:
    setup.append(
        dovecot_line("198.51.100.1", when="Dec  4 14:40:00"),
        dovecot_line("198.51.100.2", when="Dec  4 14:45:00"),
    )
    setup.popbs("sync", "--now", NOW, check=True)
    setup.append(
        dovecot_line("198.51.100.2", when="Dec  4 15:05:00"),
        dovecot_line("198.51.100.3", when="Dec  4 15:06:00"),
    )
    later = "2026-12-04T15:11:00"  # 198.51.100.1's grant ran out at 15:10
    before = snapshot(setup.root)
    done = setup.popbs("sync", "--dry-run", "--now", later)
    assert (done.returncode, done.stdout) == (
        1,
        "+ 198.51.100.3\n- 198.51.100.1\n~ 198.51.100.2\n",
    )
    assert snapshot(setup.root) == before

    setup.popbs("sync", "--now", later, check=True)
    assert setup.query("198.51.100.1") is None
    assert setup.query("198.51.100.3") is not None
    again = setup.popbs("sync", "--dry-run", "--now", later)
    assert (again.returncode, again.stdout) == (0, "")


def test_a_missing_map_counts_as_a_change(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:45:00"))
    setup.popbs("sync", "--now", NOW, check=True)
    setup.db.unlink()
    done = setup.popbs("sync", "--dry-run", "--now", NOW)
    assert (done.returncode, done.stdout) == (1, "")
    assert "would be rebuilt: it is missing or older than the grant file" in (
        done.stderr
    )
    assert not setup.db.exists()


def test_reset_previews_a_first_run_without_forgetting(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.2", when="Dec  4 14:45:00"))
    setup.popbs("sync", "--now", NOW, check=True)
    setup.map.write_text(setup.map.read_text().splitlines()[0] + "\n")
    setup.popbs("publish", "--now", NOW, check=True)
    state = setup.state_dir / "state.json"
    saved = state.read_bytes()

    done = setup.popbs("sync", "--dry-run", "--reset", "--now", NOW)
    assert (done.returncode, done.stdout) == (1, "+ 198.51.100.2\n")
    assert state.read_bytes() == saved
    plain = setup.popbs("sync", "--dry-run", "--now", NOW)
    assert (plain.returncode, plain.stdout) == (0, "")
