"""Turn a log line's own timestamp into Unix seconds.

Syslog's traditional format (RFC 3164) has no year. The year comes from the
data: a reference time that the line cannot be later than (the file's mtime,
or `now` when that is earlier), and the order of the lines in the file.
"""

import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

MONTHS = {
    name: number
    for number, name in enumerate(
        [
            "Jan",
            "Feb",
            "Mar",
            "Apr",
            "May",
            "Jun",
            "Jul",
            "Aug",
            "Sep",
            "Oct",
            "Nov",
            "Dec",
        ],
        start=1,
    )
}

# How far a yearless line may seem to lie after the reference before it is
# taken for last year's: writers in another time zone can be up to a day off.
FUTURE_SLACK = 2 * 86400

# No TTL or session bound is longer than a year.
MAX_DURATION = 366 * 86400

# Times past this (the last second of 9999) are nonsense, from a line or a user.
LATEST = 253402300799.0

# A yearless line this far before the previous one means the year turned.
YEAR_TURN = 120 * 86400


@dataclass(frozen=True)
class Yearless:
    """An RFC 3164 stamp such as `Dec  4 14:56:54`, in local time."""

    month: int
    day: int
    hour: int
    minute: int
    second: int


Stamp = Yearless | datetime | None


def _local(year: int, stamp: Yearless) -> float | None:
    minute = _local_minute(year, stamp.month, stamp.day, stamp.hour, stamp.minute)
    return None if minute is None else minute + stamp.second


@lru_cache(maxsize=1024)
def _local_minute(
    year: int, month: int, day: int, hour: int, minute: int, isdst: int = -1
) -> float | None:
    # A log's lines share their minutes: mktime once a minute, not a line.
    # Lines come in order, so a few recent minutes suffice; a bigger table
    # made a scan's memory grow with the log (issue 5, P4).
    try:
        datetime(year, month, day)
    except ValueError:
        return None
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, isdst))


@dataclass
class YearGuesser:
    """Resolves the stamps of one file, in order, against a reference time."""

    reference: float
    _previous: float | None = field(default=None, init=False)

    def resolve(self, stamp: Stamp) -> float | None:
        if stamp is None:
            return None
        if isinstance(stamp, datetime):
            # A naive datetime is local time, as the writer meant it. Year 1
            # has no local time before it to convert from.
            try:
                seconds = stamp.timestamp()
            except (ValueError, OverflowError, OSError):
                return None
            return seconds if 0 <= seconds <= LATEST else None

        year = time.localtime(self.reference).tm_year
        when = self._in_year_up_to(stamp, year)
        if when is None:
            return None

        # Lines are in order: a jump back of months means the year turned
        # (Dec 31 then Jan 1), as long as that stays before the reference.
        if self._previous is not None and when < self._previous - YEAR_TURN:
            later = _local(time.localtime(when).tm_year + 1, stamp)
            if later is not None and later <= self.reference + FUTURE_SLACK:
                when = later
        # When clocks go back, an hour of wall time repeats; mktime takes the
        # first. Lines are in order: a step back of at most that hour means
        # the second one (log-faults case 24).
        elif self._previous is not None and 0 < self._previous - when <= 3600:
            year_of = time.localtime(when).tm_year
            second = _local_minute(
                year_of, stamp.month, stamp.day, stamp.hour, stamp.minute, isdst=0
            )
            if second is not None and second + stamp.second > when:
                when = max(when, second + stamp.second)
        self._previous = when
        return when

    def _in_year_up_to(self, stamp: Yearless, year: int) -> float | None:
        # Feb 29 may need to go back up to eight years to find a leap year.
        for candidate in range(year, year - 9, -1):
            when = _local(candidate, stamp)
            if when is not None and when <= self.reference + FUTURE_SLACK:
                return when
        return None


def parse_iso(text: str) -> datetime | None:
    """ISO 8601 / RFC 3339 as rsyslog, journalctl and Java loggers write it."""
    try:
        return datetime.fromisoformat(text.replace(",", ".", 1))
    except ValueError:
        return None


def parse_yearless(month: str, day: str, hms: str) -> Yearless | None:
    try:
        hour, minute, second = map(int, hms.split(":"))
    except ValueError:
        return None
    if not (0 <= hour < 24 and 0 <= minute < 60 and 0 <= second < 61):
        return None
    return Yearless(MONTHS[month], int(day), hour, minute, min(second, 59))


def parse_ctime(month: str, day: str, hms: str, year: str) -> datetime | None:
    """`Fri Dec 04 16:33:00 2026`, as qpopper's own trace file writes it."""
    stamp = parse_yearless(month, day, hms)
    if stamp is None:
        return None
    try:
        return datetime(
            int(year), stamp.month, stamp.day, stamp.hour, stamp.minute, stamp.second
        )
    except ValueError:
        return None


def parse_when(text: str, now: float) -> float:
    """Parse a user-given time: Unix seconds, or ISO 8601 (local time if naive).

    Raises ValueError with a message fit for the user.
    """
    text = text.strip()
    try:
        when = float(text)
    except ValueError:
        when = _parse_iso_when(text)
    # float() takes "nan" and "inf": a clock that never passes, or always has.
    if not 0 <= when <= LATEST:
        raise ValueError(f"{text!r} is out of range")
    return when


def _parse_iso_when(text: str) -> float:
    stamp = parse_iso(text)
    if stamp is None:
        # dateutil is only imported for the odd forms the stdlib refuses.
        from dateutil import parser as date_parser

        try:
            stamp = date_parser.isoparse(text)
        except (ValueError, OverflowError):
            raise ValueError(
                f"{text!r} is neither Unix seconds nor an ISO 8601 time"
            ) from None
    try:
        return stamp.timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{text!r} is out of range") from None


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `2h`, `1d` or plain seconds; raises ValueError."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip().lower()
    factor = units.get(text[-1:], 0)
    number = text[:-1] if factor else text
    factor = factor or 1
    if not (number.isascii() and number.isdigit()) or int(number) == 0:
        raise ValueError(
            f"{text!r} is not a duration: use a positive number of seconds, "
            "or 90s, 30m, 2h, 1d"
        )
    seconds = int(number) * factor
    if seconds > MAX_DURATION:
        raise ValueError(f"{text!r} is longer than a year")
    return seconds


def format_local(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(when))


def format_left(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
