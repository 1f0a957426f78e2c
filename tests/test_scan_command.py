"""`popbs scan`: its output forms, its inputs and its use of the state."""

import bz2
import gzip
import json
from pathlib import Path

import pytest

from helpers import Setup, dovecot_line, noise

NOW = ("--now", "2026-12-04T16:00:00")


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    setup = Setup(tmp_path)
    setup.append(
        *noise(3),
        dovecot_line("198.51.100.1", user="alice", when="Dec  4 10:00:00"),
        dovecot_line("::ffff:198.51.100.2", user="bob", when="Dec  4 15:59:00"),
    )
    return setup


def test_text_output(setup: Setup) -> None:
    done = setup.popbs("scan", *NOW, check=True)
    first, second = done.stdout.splitlines()
    assert first.split()[0::2] == ["198.51.100.1", "alice"]
    assert second.split()[0::2] == ["198.51.100.2", "bob"]
    assert first.split()[3] == "dovecot"


def test_json_output_and_old_logins_are_reported(setup: Setup) -> None:
    done = setup.popbs("scan", "--json", *NOW, check=True)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [sorted(record) for record in records] == [
        ["ip", "log", "protocol", "server", "time", "user"]
    ] * 2
    assert records[0]["ip"] == "198.51.100.1"  # six hours old: scan ignores TTL
    assert records[0]["protocol"] == "imap"
    assert records[0]["log"] == str(setup.log)


def test_no_state_leaves_state_alone(setup: Setup) -> None:
    done = setup.popbs("scan", "--no-state", *NOW, check=True)
    assert len(done.stdout.splitlines()) == 2
    assert not setup.state_dir.exists()


def test_from_start_ignores_saved_offsets(setup: Setup) -> None:
    setup.popbs("scan", *NOW, check=True)
    assert setup.popbs("scan", *NOW, check=True).stdout == ""
    done = setup.popbs("scan", "--from-start", "--no-state", *NOW, check=True)
    assert len(done.stdout.splitlines()) == 2
    assert setup.popbs("scan", *NOW, check=True).stdout == ""


def test_files_and_stdin(setup: Setup) -> None:
    packed = setup.root / "old.log.bz2"
    packed.write_bytes(bz2.compress(setup.log.read_bytes()))
    stdin = dovecot_line("198.51.100.3") + "\n"
    done = setup.popbs("scan", str(packed), "-", *NOW, stdin=stdin, check=True)
    ips = [line.split()[0] for line in done.stdout.splitlines()]
    assert ips == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    assert not setup.state_dir.exists()


def test_last_line_without_newline_counts_in_a_named_file(setup: Setup) -> None:
    named = setup.root / "cut.log"
    named.write_text(dovecot_line("198.51.100.4"))
    done = setup.popbs("scan", str(named), *NOW, check=True)
    assert done.stdout.split()[0] == "198.51.100.4"


def test_missing_file_argument(setup: Setup) -> None:
    done = setup.popbs("scan", str(setup.root / "nope.log"), *NOW)
    assert done.returncode == 3
    assert done.stderr.startswith("popbs: error: cannot read")


def test_corrupt_compressed_file_is_a_clear_error(setup: Setup) -> None:
    cut = setup.root / "cut.log.gz"
    cut.write_bytes(gzip.compress(setup.log.read_bytes())[:40])
    done = setup.popbs("scan", str(cut), *NOW)
    assert done.returncode == 3
    assert done.stderr.startswith(f"popbs: error: cannot read {cut}: ")
    assert len(done.stderr.splitlines()) == 1
