"""The two-process read (scanner.read_big): a child searches, the parent reads
its candidates from a pipe. Whatever the child manages, the lines and the
offset are those of the one-process read."""

import os
import random
import tempfile
from pathlib import Path
from typing import BinaryIO

import pytest

from popbs_tools import scanner

from helpers import dovecot_line

MARKERS = (b"Login: ",)


def write_log(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for n in range(3000):
            if rng.random() < 0.2:
                handle.write(dovecot_line(f"198.51.100.{n % 250 + 1}", user=f"u{n}"))
            else:
                handle.write("Dec  4 14:40:12 mail postfix/smtpd[1]: " + "x" * 90)
            handle.write("\n")


def read(log: Path) -> tuple[list[bytes], int | None]:
    reader = scanner.LogScan(log, None, MARKERS)
    lines = [line for _, line in reader.lines()]
    assert all(isinstance(line, bytes) for line in lines)
    return lines, reader.position.offset if reader.position else None


@pytest.mark.parametrize("cut", [0.0, 0.01, 0.3, 0.5, 0.77, 0.999])
def test_a_child_that_dies_mid_way_loses_and_repeats_no_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: float
) -> None:
    log = tmp_path / "mail.log"
    write_log(log, seed=int(cut * 1000))
    monkeypatch.setattr(scanner, "CHUNK", 8192)  # many records in the pipe
    monkeypatch.setattr(scanner, "PARALLEL_MIN", 1 << 40)
    serial = read(log)

    real_send = scanner._send_candidates

    # A fake: a child killed after sending part of its output, cut anywhere,
    # even inside a record. A real kill could not be timed to land there.
    def dies_mid_way(
        handle: BinaryIO, start: int, markers: tuple[bytes, ...], pipe: int
    ) -> None:
        with tempfile.TemporaryFile() as spool:
            real_send(handle, start, markers, os.dup(spool.fileno()))
            spool.seek(0)
            sent = spool.read()
        os.write(pipe, sent[: int(len(sent) * cut)])
        os._exit(1)

    monkeypatch.setattr(scanner, "_send_candidates", dies_mid_way)
    monkeypatch.setattr(scanner, "PARALLEL_MIN", 0)
    assert read(log) == serial
    assert len(serial[0]) > 300
