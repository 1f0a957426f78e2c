"""Reading a log since the saved offset, through rotation, on real files.

Each case asserts through `popbs scan` with state that every login line is
reported exactly once across runs.
"""

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from popbs_tools import scanner
from popbs_tools.state import Position

from helpers import Setup, dovecot_line, noise

NOW = ["--now", "2026-12-04T16:00:00"]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def scanned(setup: Setup) -> list[str]:
    """IPs reported by one `popbs scan` run with state."""
    done = setup.popbs("scan", *NOW, check=True)
    return [line.split()[0] for line in done.stdout.splitlines()]


def test_first_run_reads_whole_file_then_only_what_is_new(setup: Setup) -> None:
    setup.append(*noise(5), dovecot_line("198.51.100.1"), *noise(3))
    assert scanned(setup) == ["198.51.100.1"]
    assert scanned(setup) == []

    setup.append(dovecot_line("198.51.100.2"), *noise(2))
    assert scanned(setup) == ["198.51.100.2"]


def test_nothing_new_rewrites_no_state(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1"))
    scanned(setup)
    state = setup.state_dir / "state.json"
    before = state.stat()

    assert scanned(setup) == []
    after = state.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_half_written_last_line_is_read_once_when_complete(setup: Setup) -> None:
    line = dovecot_line("198.51.100.3")
    with open(setup.log, "w") as handle:
        handle.write(dovecot_line("198.51.100.1") + "\n" + line[:40])
    assert scanned(setup) == ["198.51.100.1"]

    with open(setup.log, "a") as handle:
        handle.write(line[40:] + "\n")
    assert scanned(setup) == ["198.51.100.3"]
    assert scanned(setup) == []


def test_rename_rotation_finishes_old_file_then_reads_new(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))  # unread when rotation comes

    setup.log.rename(setup.log.with_name("mail.log.1"))
    setup.append(dovecot_line("198.51.100.3"), *noise(3))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]
    assert scanned(setup) == []


def test_rename_and_compress_is_found_by_content(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    rotated = setup.log.with_name("mail.log.1.gz")
    rotated.write_bytes(gzip.compress(setup.log.read_bytes()))
    setup.log.unlink()
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]


def test_dateext_rotation(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    setup.log.rename(setup.log.with_name("mail.log-20261204"))
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]


@pytest.mark.parametrize("regrown", [False, True], ids=["shorter", "regrown-past"])
def test_copytruncate(setup: Setup, regrown: bool) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    # logrotate's copytruncate: copy to .1, truncate the live file in place.
    setup.log.with_name("mail.log.1").write_bytes(setup.log.read_bytes())
    inode = setup.log.stat().st_ino
    os.truncate(setup.log, 0)
    new_lines = [dovecot_line("198.51.100.3", when="Dec  4 15:00:00")]
    if regrown:
        new_lines += noise(200, when="Dec  4 15:00:01")
    setup.append(*new_lines)
    assert setup.log.stat().st_ino == inode
    assert (setup.log.stat().st_size > 4000) == regrown

    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]
    assert scanned(setup) == []


def test_truncated_in_place_without_copy_reads_from_start(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]

    # An unrelated .1 must not be adopted as the copy.
    setup.append(dovecot_line("198.51.100.9"), log=setup.log.with_name("mail.log.1"))
    os.truncate(setup.log, 0)
    setup.append(dovecot_line("198.51.100.3"))
    done = setup.popbs("scan", *NOW, check=True)
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["198.51.100.3"]
    assert "truncated or replaced" in done.stderr


def test_missing_log_keeps_position_and_warns_only_if_it_stays_missing(
    setup: Setup,
) -> None:
    import json

    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    state = setup.state_dir / "state.json"
    saved = json.loads(state.read_text())["logs"]

    setup.log.unlink()
    done = setup.popbs("scan", "--now", "2026-12-04T16:00:00", check=True)
    assert (done.stdout, done.stderr) == ("", "")
    assert json.loads(state.read_text())["logs"] == saved
    done = setup.popbs("scan", "--now", "2026-12-04T16:11:00", check=True)
    assert "has been missing for 11 minutes" in done.stderr

    setup.append(dovecot_line("198.51.100.2"))
    done = setup.popbs("scan", "--now", "2026-12-04T16:12:00", check=True)
    assert done.stdout.split()[:1] == ["198.51.100.2"]
    assert json.loads(state.read_text())["missing"] == {}


def test_new_file_with_same_size_is_a_new_generation(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(dovecot_line("198.51.100.1") + "\n")
    with open(log, "rb") as handle:
        saved = scanner.position_of(handle, log.stat().st_size, log.stat())

    log.write_text(dovecot_line("198.51.100.2") + "\n")
    with open(log, "rb") as handle:
        assert not scanner.holds(handle, saved)


def test_overlong_line_is_skipped_in_bounded_memory(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    with open(log, "wb") as handle:
        handle.write(b"Dec  4 14:40:11 mail junk: " + b"Login: x" * 400_000 + b"\n")
        handle.write(dovecot_line("198.51.100.4").encode() + b"\n")
    reader = scanner.LogScan(log, None, (b"Login: ",))
    lines = [line for _, line in reader.lines()]
    assert len(lines) == 1 and b"198.51.100.4" in lines[0]
    assert isinstance(reader.position, Position)
    assert reader.position.offset == log.stat().st_size


def test_candidate_lines_are_whole_lines_in_order() -> None:
    data = b"a Login: 1\nb\nc Stats: 2 Login: x\nd Login: 3\n"
    assert scanner.candidate_lines(data, (b"Login: ", b"Stats: ")) == [
        b"a Login: 1",
        b"c Stats: 2 Login: x",
        b"d Login: 3",
    ]


def test_unfinished_overlong_line_is_never_read_from_its_middle(setup: Setup) -> None:
    # The saved offset must stay before the unfinished line: saved inside it,
    # the rest of another program's line would be read as a line of its own.
    subject = "A" * (scanner.MAX_LINE + 5000)
    with open(setup.log, "w") as handle:
        handle.write(
            f"Dec  4 15:40:00 mail postfix/cleanup[9]: header Subject: {subject}"
        )
    assert scanned(setup) == []

    setup.append(dovecot_line("203.0.113.66"))
    assert scanned(setup) == []
    setup.append(dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]


def rotate(setup: Setup, *renames: tuple[str, str]) -> None:
    for old, new in renames:
        (setup.root / old).rename(setup.root / new)


def test_rotated_twice_reads_the_generation_in_between(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    # Two rotations while popbs did not run; the older one compressed.
    rotate(setup, ("mail.log", "mail.log.1"))
    setup.append(dovecot_line("198.51.100.3"))
    (setup.root / "mail.log.2.gz").write_bytes(
        gzip.compress((setup.root / "mail.log.1").read_bytes())
    )
    (setup.root / "mail.log.1").unlink()
    rotate(setup, ("mail.log", "mail.log.1"))
    setup.append(dovecot_line("198.51.100.4"))

    assert scanned(setup) == ["198.51.100.2", "198.51.100.3", "198.51.100.4"]
    assert scanned(setup) == []


def test_numbered_generations_sort_by_number_not_name(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    for name in ("mail.log.10.gz", "mail.log.9.gz", "mail.log.1", "mail.log.2.gz"):
        (tmp_path / name).write_bytes(b"")
    names = [path.name for path in scanner.rotated_siblings(log)]
    assert names == ["mail.log.1", "mail.log.2.gz", "mail.log.9.gz", "mail.log.10.gz"]


def test_late_lines_in_the_renamed_file_are_read(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    rotate(setup, ("mail.log", "mail.log.1"))
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.2"]

    # The writer had not reopened its log yet.
    setup.append(dovecot_line("198.51.100.3"), log=setup.root / "mail.log.1")
    setup.append(dovecot_line("198.51.100.4"))
    assert scanned(setup) == ["198.51.100.3", "198.51.100.4"]
    assert scanned(setup) == []


def test_a_generation_empty_at_the_last_run_is_found_by_inode(setup: Setup) -> None:
    setup.log.write_text("")
    assert scanned(setup) == []
    setup.append(dovecot_line("198.51.100.1"))
    rotate(setup, ("mail.log", "mail.log.1"))
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.1", "198.51.100.2"]


def test_nul_bytes_at_the_head_are_skipped(setup: Setup) -> None:
    with open(setup.log, "wb") as handle:
        handle.write(b"\0" * 500 + dovecot_line("198.51.100.1").encode() + b"\n")
    done = setup.popbs("scan", *NOW, check=True)
    assert done.stdout.split()[:1] == ["198.51.100.1"]
    assert "500 NUL bytes" in done.stderr


def test_corrupt_state_falls_back_to_the_previous_copy(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.2"]  # saves, keeping the last copy
    setup.append(dovecot_line("198.51.100.3"))

    state = setup.state_dir / "state.json"
    state.write_bytes(b'{"format": "popbs-state", "version": 1, "logs": {')
    done = setup.popbs("scan", *NOW, check=True)
    # The previous copy ends after the first line, never at offset 0.
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "198.51.100.2",
        "198.51.100.3",
    ]
    assert "corrupt" in done.stderr and "previous copy" in done.stderr
    corrupt = setup.state_dir / "state.json.corrupt"
    assert corrupt.read_bytes().startswith(b'{"format"')
    assert scanned(setup) == []


def test_reset_reads_again_as_on_a_first_run(setup: Setup) -> None:
    setup.append(dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    (setup.state_dir / "state.json").write_bytes(b"\0\0")
    assert setup.popbs("scan", *NOW).returncode == 5
    done = setup.popbs("scan", "--reset", *NOW, check=True)
    assert done.stdout.split()[:1] == ["198.51.100.1"]
    assert scanned(setup) == []


def test_identical_copy_with_a_new_inode_continues_from_the_offset(
    setup: Setup,
) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    copy = setup.root / "copy"
    copy.write_bytes(setup.log.read_bytes())
    inode = setup.log.stat().st_ino
    copy.replace(setup.log)
    assert setup.log.stat().st_ino != inode
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.2"]


def test_short_new_file_is_read_without_waiting_for_more(setup: Setup) -> None:
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.log.rename(setup.log.with_name("mail.log.1"))
    setup.append(dovecot_line("198.51.100.2"))  # far shorter than 1 KiB
    assert scanned(setup) == ["198.51.100.2"]
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.3"]


def test_a_ten_megabyte_line_and_binary_junk_are_passed_over(setup: Setup) -> None:
    with open(setup.log, "wb") as handle:
        handle.write(b"\xff\xfe junk \x00\x01 Login: " * 1000 + b"\n")
        handle.write(b"Dec  4 15:00:00 mail x: " + b"Z" * 10_000_000 + b"\n")
        handle.write(dovecot_line("198.51.100.1").encode() + b"\n")
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.2"]


def test_rename_and_zstd_compress_is_found_by_content(setup: Setup) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd missing")
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))

    setup.log.rename(setup.log.with_name("mail.log.1"))
    subprocess.run(["zstd", "-q", "--rm", str(setup.root / "mail.log.1")], check=True)
    assert (setup.root / "mail.log.1.zst").exists()
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]
    done = setup.popbs("scan", str(setup.root / "mail.log.1.zst"), *NOW, check=True)
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "198.51.100.1",
        "198.51.100.2",
    ]


@pytest.mark.parametrize("seed", range(6))
def test_two_process_read_gives_the_same_lines_and_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    log = tmp_path / "mail.log"
    with open(log, "w") as handle:
        for n in range(rng.randrange(2000, 6000)):
            if rng.random() < 0.1:
                handle.write(dovecot_line(f"198.51.100.{n % 250 + 1}", user=f"u{n}"))
            else:
                handle.write(
                    "Dec  4 14:40:12 mail postfix/smtpd[1]: " + "x" * rng.randrange(300)
                )
            handle.write("\n")
        handle.write("Dec  4 14:41:00 mail dovecot: imap-login: Login: half")

    def read(minimum: int) -> tuple[list[bytes], int | None]:
        monkeypatch.setattr(scanner, "PARALLEL_MIN", minimum)
        reader = scanner.LogScan(log, None, (b"Login: ",))
        lines = [line for _, line in reader.lines()]
        return lines, reader.position.offset if reader.position else None

    serial = read(1 << 40)
    parallel = read(0)
    assert parallel == serial
    assert len(serial[0]) > 100


def test_a_half_written_zst_is_not_taken_for_the_whole_generation(
    setup: Setup,
) -> None:
    if shutil.which("zstd") is None:
        pytest.skip("zstd missing")
    setup.append(*noise(40), dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(*(dovecot_line(f"198.51.100.{n}") for n in range(2, 200)))

    # `zstd --rm mail.log.1` at work: the plain file is still there, whole.
    setup.log.rename(setup.root / "mail.log.1")
    packed = subprocess.run(
        ["zstd", "-q", "-c", str(setup.root / "mail.log.1")],
        capture_output=True,
        check=True,
    ).stdout
    (setup.root / "mail.log.1.zst").write_bytes(packed[: len(packed) // 2])
    setup.append(dovecot_line("198.51.100.250"))
    found = scanned(setup)
    assert len(found) == 199 and found[-1] == "198.51.100.250"

    done = setup.popbs("scan", str(setup.root / "mail.log.1.zst"), *NOW)
    assert done.returncode == 3 and "cannot read" in done.stderr


def test_a_nul_gap_longer_than_a_read_loses_no_line(setup: Setup) -> None:
    with open(setup.log, "wb") as handle:
        handle.seek(5_000_000)
        handle.write(
            (
                dovecot_line("198.51.100.1")
                + "\n"
                + dovecot_line("198.51.100.2")
                + "\n"
            ).encode()
        )
    done = setup.popbs("scan", *NOW, check=True)
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "198.51.100.1",
        "198.51.100.2",
    ]
    assert "5000000 NUL bytes" in done.stderr


def test_an_overlong_login_line_counts_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "mail.log"
    long_user = "u" * (scanner.MAX_LINE + 10)
    with open(log, "w") as handle:
        handle.write(dovecot_line("198.51.100.1", user=long_user) + "\n")
        handle.write("Dec  4 14:40:12 mail x: " + "y" * (scanner.CHUNK - 50_000) + "\n")
        handle.write(dovecot_line("198.51.100.2", user=long_user) + "\n")
        handle.write(dovecot_line("198.51.100.3") + "\n")
    for minimum in (1 << 40, 0):
        monkeypatch.setattr(scanner, "PARALLEL_MIN", minimum)
        reader = scanner.LogScan(log, None, (b"Login: ",))
        lines = [line for _, line in reader.lines()]
        assert [b"198.51.100.3" in line for line in lines] == [True]


def test_no_state_scan_changes_nothing_and_a_lost_state_uses_the_copy(
    setup: Setup,
) -> None:
    setup.append(dovecot_line("198.51.100.1"))
    assert scanned(setup) == ["198.51.100.1"]
    setup.append(dovecot_line("198.51.100.2"))
    assert scanned(setup) == ["198.51.100.2"]
    state = setup.state_dir / "state.json"
    state.write_bytes(state.read_bytes()[:50])
    before = sorted(p.name for p in setup.state_dir.iterdir())

    setup.popbs("scan", "--no-state", *NOW, check=True)
    assert sorted(p.name for p in setup.state_dir.iterdir()) == before

    state.unlink()  # moved away by an admin, say
    setup.append(dovecot_line("198.51.100.3"))
    assert scanned(setup) == ["198.51.100.2", "198.51.100.3"]


def test_deeply_nested_state_is_corrupt_not_a_crash(setup: Setup) -> None:
    setup.state_dir.mkdir(mode=0o700)
    (setup.state_dir / "state.json").write_text("[" * 100_000 + "]" * 100_000)
    done = setup.popbs("scan", *NOW)
    assert done.returncode == 5 and "corrupt" in done.stderr
