"""The cases of shared/log-faults.md not covered in test_scanner.py.

As there, each asserts through `popbs scan` with state that every login line
is reported exactly once across runs.
"""

import bz2
import gzip
import lzma
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_scanner import NOW, scanned

from popbs_tools import scanner, state

from helpers import Setup, dovecot_line, noise


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gz": gzip.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("mail.log.1.gz", "gz"),
        ("mail.log.0.bz2", "bz2"),  # FreeBSD's newsyslog
        ("mail.log.1.xz", "xz"),
        ("mail.log-20261204.gz", "gz"),  # dateext, compressed
        ("mail.log.1", "xz"),  # compressed under a plain name: magic decides
    ],
)
def test_renamed_and_compressed_at_once(setup: Setup, name: str, kind: str) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    (setup.root / name).write_bytes(COMPRESSORS[kind](setup.log.read_bytes()))
    setup.log.unlink()
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]
    assert scanned(setup) == []


def test_postfix_logrotate_names_are_found(setup: Setup) -> None:
    # `postfix logrotate` (maillog_file) renames to NAME.YYYYMMDD-HHMMSS and
    # compresses with maillog_file_compressor, gzip by default.
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    rotated = setup.root / "mail.log.20261204-155900.gz"
    rotated.write_bytes(gzip.compress(setup.log.read_bytes()))
    setup.log.unlink()
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]
    assert scanned(setup) == []


def test_rewritten_in_place_past_the_offset_is_a_new_generation(setup: Setup) -> None:
    """Same inode, other content, longer than the saved offset (cases 8-10)."""
    setup.append(*noise(5), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    inode = setup.log.stat().st_ino

    with open(setup.log, "r+") as handle:  # the same inode, rewritten
        handle.truncate(0)
        handle.write("\n".join([*noise(20, when="Dec  4 15:00:00")]) + "\n")
        handle.write(dovecot_line("198.51.100.2") + "\n")
    assert setup.log.stat().st_ino == inode
    done = setup.popbs("scan", *NOW, check=True)
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["198.51.100.2"]
    assert "truncated or replaced" in done.stderr
    assert scanned(setup) == []


def test_rotated_while_a_run_is_reading(setup: Setup) -> None:
    """Case 21: the run reads what its descriptor holds; the next run the rest.

    The rotation really happens between two reads of the running scan.
    """
    setup.append(*noise(40), dovecot_line("198.51.100.1"), *noise(40))
    reader = scanner.LogScan(setup.log, None, (b"Login: ",))
    lines = reader.lines()
    read = [next(lines)]

    setup.log.rename(setup.root / "mail.log.1")
    setup.append(dovecot_line("198.51.100.2"), log=setup.root / "mail.log.1")
    setup.append(dovecot_line("198.51.100.3"))
    read += list(lines)
    assert reader.position is not None
    reported = [ip for _, line in read for ip in ips_in(line)]

    # What popbs saves after such a run, then the next runs.
    setup.state_dir.mkdir(mode=0o700)
    state.save(setup.state_dir, state.State(logs={str(setup.log): reader.position}))
    reported += scanned(setup) + scanned(setup)
    assert sorted(reported) == ["198.51.100.1", "198.51.100.2", "198.51.100.3"]


def ips_in(line: object) -> list[str]:
    assert isinstance(line, bytes)
    return [ip for ip in ("198.51.100.1", "198.51.100.2") if ip.encode() in line]


def test_the_clock_stepping_back_and_forth_changes_no_position(setup: Setup) -> None:
    """Case 25: positions never depend on the clock."""
    runs = []
    for number, now in enumerate(
        ["2026-12-04T16:00:00", "2026-12-03T09:00:00", "2027-01-10T12:00:00"]
    ):
        setup.append(dovecot_line(f"198.51.100.{number + 1}"), *noise(3))
        done = setup.popbs("scan", "--now", now, check=True)
        runs.append([line.split()[0] for line in done.stdout.splitlines()])
    assert runs == [["198.51.100.1"], ["198.51.100.2"], ["198.51.100.3"]]


def test_a_huge_line_of_junk_between_logins_loses_neither(setup: Setup) -> None:
    """Case 30 across runs: a 10 MB line written in two halves."""
    setup.append(dovecot_line("198.51.100.1"))
    with open(setup.log, "ab") as handle:
        handle.write(
            b"Dec  4 14:40:11 mail junk: "
            + os.urandom(5 << 20).hex()[:5_000_000].encode()
        )
    assert scanned(setup) == ["198.51.100.1"]
    with open(setup.log, "ab") as handle:
        handle.write(b"\xff\xfe" * 2_500_000 + b"\n")
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.2"]
    assert scanned(setup) == []


def test_rotated_into_another_directory_is_found_through_a_glob(
    setup: Setup,
) -> None:
    """logrotate's olddir: the old generation moves to another directory."""
    old = setup.root / "old"
    old.mkdir()
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    (setup.root / "mail.log").rename(old / "mail.log.1")
    setup.append(dovecot_line("198.51.100.3"))
    glob = ["--rotated", str(old / "*")]
    done = setup.popbs("scan", *NOW, *glob, check=True)
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "198.51.100.2",
        "198.51.100.3",
    ]
    assert "truncated or replaced" not in done.stderr
    assert setup.popbs("scan", *NOW, *glob, check=True).stdout == ""
