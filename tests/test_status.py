"""`popbs status` after real syncs, with the real postmap and a real flock."""

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from helpers import POSTMAP, Setup, dovecot_line, noise

pytestmark = pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap missing")

NOW = "2026-12-04T14:45:00"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def status(setup: Setup, now: str = NOW) -> dict[str, Any]:
    done = setup.popbs("status", "--json", "--now", now, check=True)
    assert done.stderr == ""
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def text(setup: Setup, now: str = NOW) -> list[str]:
    return setup.popbs("status", "--now", now, check=True).stdout.splitlines()


def sync(setup: Setup, now: str = NOW) -> None:
    setup.popbs("sync", "--now", now, check=True)


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_mtime_ns, path.stat().st_size)
        for path in sorted(root.rglob("*"))
    }


@contextmanager
def lock_held(setup: Setup) -> Iterator[None]:
    fd = os.open(setup.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_before_the_first_sync_status_says_so_and_creates_nothing(
    setup: Setup,
) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    before = tree(setup.root)
    lines = text(setup)
    assert tree(setup.root) == before
    assert lines == [
        f"log        {setup.log}",
        "  read     not yet",
        "  rotated  not seen",
        f"state      {setup.state_dir}: no state yet: popbs sync has not run",
        "last run   none recorded",
        f"grants     0 in {setup.map}",
        f"map        {setup.db} does not exist",
        "lock       free",
    ]


def test_after_syncs_offsets_sizes_grants_and_last_run(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.7"), dovecot_line("198.51.100.8"))
    sync(setup)
    size = setup.log.stat().st_size

    found = status(setup, "2026-12-04T14:46:00")
    (log,) = found["logs"]
    assert (log["offset"], log["size"], log["same_file"]) == (size, size, True)
    assert log["ino"] == setup.log.stat().st_ino
    assert found["map"]["grants"] == found["map"]["valid"] == 2
    assert found["map"]["built"] == str(setup.db)
    assert found["last_run"]["result"] == "ok"
    assert found["last_run"]["exit_code"] == 0
    assert found["lock"] == {
        "path": str(setup.state_dir / "lock"),
        "held": False,
        "holder": None,
        "problem": None,
    }

    setup.append(*noise(3))
    grown = setup.log.stat().st_size
    lines = text(setup)
    assert f"  read     {size} of {grown} bytes ({grown - size} to read)" in lines
    assert "grants     2 in " + str(setup.map) in lines
    assert any(line.startswith("last run   sync at ") for line in lines)
    assert lines[-1] == "lock       free"


def test_expired_grants_are_counted_apart(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup)
    lines = text(setup, "2026-12-04T15:20:00")
    assert f"grants     1 in {setup.map}, 0 not expired" in lines


def test_lock_held_by_another_process_is_shown_without_disturbing_it(
    setup: Setup,
) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup)
    before = tree(setup.root)
    with lock_held(setup):
        found = status(setup)
        assert found["lock"]["held"] is True
        assert found["lock"]["holder"] == os.getpid()
        assert text(setup)[-1] == f"lock       held by PID {os.getpid()}"
        # Still ours: status took nothing from us.
        probe = os.open(setup.state_dir / "lock", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
    assert tree(setup.root) == before
    assert status(setup)["lock"]["held"] is False


def test_a_sync_skipped_for_the_lock_leaves_the_record_alone(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup)
    record = setup.state_dir / "last-run.json"
    before = record.read_bytes()
    with lock_held(setup):
        sync(setup, "2026-12-04T14:50:00")
    assert record.read_bytes() == before
    assert status(setup)["last_run"]["result"] == "ok"


def test_a_failed_sync_is_recorded_with_its_message_and_exit_code(
    setup: Setup,
) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup)
    setup.log.unlink()
    setup.log.mkdir()
    failed = setup.popbs("sync", "--now", NOW)
    assert failed.returncode == 3

    run = status(setup)["last_run"]
    assert run["result"] == "error"
    assert run["exit_code"] == 3
    assert run["message"] == f"cannot read log {setup.log}: not a regular file"
    assert failed.stderr.strip() == f"popbs: error: {run['message']}"
    record = setup.state_dir / "last-run.json"
    assert record.stat().st_mode & 0o777 == 0o600
    lines = text(setup)
    assert (
        f"last run   sync at {run_time(run)} (0s ago): failed with exit code 3: "
        f"cannot read log {setup.log}: not a regular file"
    ) in lines
    assert "  file     cannot look at it: not a regular file" in lines


def run_time(run: dict[str, Any]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(run["time"]))


def test_rotation_seen_and_where_the_old_generation_was_read_to(
    setup: Setup,
) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup, "2026-12-04T14:41:00")
    rotated = setup.log.with_name("mail.log.1")
    setup.log.rename(rotated)
    setup.append(dovecot_line("198.51.100.8"), log=rotated)  # written late
    setup.append(dovecot_line("198.51.100.9"))
    sync(setup, "2026-12-04T14:42:00")

    found = status(setup)
    (log,) = found["logs"]
    assert log["rotated"] == found["last_run"]["time"]
    assert log["last_rotation"]["file"] == str(rotated)
    assert log["last_rotation"]["offset"] == rotated.stat().st_size
    assert log["last_rotation"]["ino"] == rotated.stat().st_ino
    assert log["offset"] == setup.log.stat().st_size
    assert found["map"]["grants"] == 3
    rows = [line for line in text(setup) if line.startswith("  rotated  ")]
    assert rows == [
        f"  rotated  seen {run_time(found['last_run'])}; {rotated} read to "
        f"offset {rotated.stat().st_size}"
    ]


def test_missing_log_is_reported(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup)
    setup.log.unlink()
    sync(setup)
    lines = text(setup)
    assert "  file     cannot look at it: No such file or directory" in lines
    assert any(line.startswith("  missing  since ") for line in lines)


def old_checksum(document: dict[str, Any], parts: tuple[str, ...]) -> str:
    """The checksum as a popbs that knew only `parts` wrote it."""
    body = {key: document.get(key) for key in parts}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    "dropped",
    [("rotated",), ("rotated", "missing")],
    ids=["before-rotated", "before-missing"],
)
def test_state_written_by_an_older_popbs_stays_readable(
    setup: Setup, dropped: tuple[str, ...]
) -> None:
    setup.append(dovecot_line("198.51.100.7"))
    sync(setup)
    path = setup.state_dir / "state.json"
    document = json.loads(path.read_text())
    parts = ("logs", "cursors", "sessions", "learned", "pending", "finished")
    parts += tuple(k for k in ("missing",) if k not in dropped)
    # What came later than such a popbs (rotated, manual, revoked) is absent.
    for key in set(document) - {*parts, "format", "version", "checksum"}:
        del document[key]
    document["checksum"] = old_checksum(document, parts)
    path.write_text(json.dumps(document))
    (setup.state_dir / "state.json.prev").unlink(missing_ok=True)

    offset = setup.log.stat().st_size
    assert status(setup)["logs"][0]["offset"] == offset
    setup.append(dovecot_line("198.51.100.8"))
    done = setup.popbs("sync", "--now", NOW)
    assert (done.returncode, done.stderr) == (0, "")
    assert setup.query("198.51.100.8") is not None
    assert "rotated" in json.loads(path.read_text())


def test_without_proc_locks_the_lock_is_tried_and_dropped(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake: a system without /proc cannot be made here; only the path
    # status reads it from is changed.
    from popbs_tools import status as status_module

    monkeypatch.setattr(status_module, "PROC_LOCKS", tmp_path / "no-proc-locks")
    setup.state_dir.mkdir()
    lock = setup.state_dir / "lock"
    with lock_held(setup):
        held = status_module.lock_status(lock)
    assert (held.held, held.holder) == (True, None)
    free = status_module.lock_status(lock)
    assert (free.held, free.holder) == (False, None)
    # The probe released what it took: a sync can lock at once.
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
