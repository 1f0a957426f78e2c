"""Timestamps: the line's own time, with the year taken from the data."""

import time
from datetime import datetime

import pytest

from popbs_tools import logline, timestamps
from popbs_tools.timestamps import YearGuesser


def local(*parts: int) -> float:
    return time.mktime(datetime(*parts).timetuple())


def stamp_of(line: str) -> timestamps.Stamp:
    record = logline.parse(line)
    assert record is not None
    return record.stamp


def test_december_line_read_in_january_is_last_year() -> None:
    guesser = YearGuesser(reference=local(2027, 1, 2, 8, 0, 0))
    when = guesser.resolve(stamp_of("Dec 31 23:59:59 mail dovecot: x"))
    assert when == local(2026, 12, 31, 23, 59, 59)


def test_year_turns_inside_a_file() -> None:
    guesser = YearGuesser(reference=local(2027, 1, 1, 0, 5, 0))
    first = guesser.resolve(stamp_of("Dec 31 23:59:59 mail a: x"))
    second = guesser.resolve(stamp_of("Jan  1 00:00:01 mail a: x"))
    assert (first, second) == (
        local(2026, 12, 31, 23, 59, 59),
        local(2027, 1, 1, 0, 0, 1),
    )


def test_reference_late_in_year_keeps_same_year() -> None:
    guesser = YearGuesser(reference=local(2026, 12, 4, 15, 0, 0))
    assert guesser.resolve(stamp_of("Dec 04 14:56:54 mail a: x")) == local(
        2026, 12, 4, 14, 56, 54
    )
    assert guesser.resolve(stamp_of("Dec  4 14:57:00 mail a: x")) == local(
        2026, 12, 4, 14, 57, 0
    )


def test_feb_29_goes_back_to_a_leap_year() -> None:
    guesser = YearGuesser(reference=local(2027, 3, 1, 0, 0, 0))
    assert guesser.resolve(stamp_of("Feb 29 10:00:00 mail a: x")) == local(
        2024, 2, 29, 10, 0, 0
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("2026-12-04T15:23:01+0900 mail a: x", 1796365381),
        ("2026-12-04T15:23:01+09:00 mail a: x", 1796365381),
        ("2026-12-04T06:23:01Z mail a: x", 1796365381),
        ("2026-12-04T06:23:01.999999+00:00 mail a: x", 1796365381.999999),
        ("<30>1 2026-12-04T06:23:01Z mail a 1 - - x", 1796365381),
    ],
    ids=["offset-no-colon", "offset-colon", "zulu", "fraction", "rfc5424"],
)
def test_explicit_offset_wins_over_local_zone(line: str, expected: float) -> None:
    assert YearGuesser(reference=0).resolve(stamp_of(line)) == pytest.approx(expected)


def test_ctime_carries_its_year() -> None:
    stamp = stamp_of("Fri Dec 04 16:33:00 2025 [1238] Stats: x")
    assert YearGuesser(reference=local(2027, 1, 1)).resolve(stamp) == local(
        2025, 12, 4, 16, 33, 0
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("45", 45)],
)
def test_durations(text: str, seconds: int) -> None:
    assert timestamps.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "5w", "m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        timestamps.parse_duration(text)


def test_now_accepts_seconds_and_iso() -> None:
    assert timestamps.parse_when("1796365381", 0) == 1796365381
    assert timestamps.parse_when("2026-12-04T06:23:01Z", 0) == 1796365381
    assert timestamps.parse_when("2026-12-04T06:23:01", 0) == local(
        2026, 12, 4, 6, 23, 1
    )
    with pytest.raises(ValueError):
        timestamps.parse_when("yesterday", 0)


def test_the_repeated_hour_of_a_dst_fall_back_counts_twice() -> None:
    # In its own process: the test needs a time zone with DST.
    import json
    import subprocess
    import sys

    code = """
import json
from popbs_tools import logline
from popbs_tools.timestamps import YearGuesser
guesser = YearGuesser(reference=1793600000)  # 2026-11-02, after the change
times = []
for stamp in ("01:50:00", "01:59:00", "01:05:00", "01:40:00", "02:10:00"):
    record = logline.parse(f"Nov  1 {stamp} mail dovecot: x")
    times.append(int(guesser.resolve(record.stamp)))
print(json.dumps(times))
"""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"TZ": "America/New_York", "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    times = json.loads(done.stdout)
    # EDT (UTC-4) until 02:00, then EST (UTC-5): 01:05 and 01:40 are the
    # second pass through the hour, an hour after their EDT readings.
    assert times == sorted(times)
    assert times[2] - times[1] == 6 * 60  # 05:59Z, then 06:05Z
    assert times[4] - times[3] == 30 * 60
