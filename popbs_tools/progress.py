"""A progress line on stderr for a long read of a log, at a terminal only.

Under cron stderr is no terminal and nothing is ever drawn, so a successful
run stays silent. At a terminal the line appears once a run has been going
for a couple of seconds (a first run on a big log, a catch-up), is redrawn a
few times a second, and is wiped before any log message and when the read
ends. Like logging, the display is set up once per process by the command
line; the scanner only reports how far it has read.
"""

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TextIO

DELAY = 2.0
# Seconds before the line appears. Not a setting: the tests set it to 0 to
# see the line without a log big enough to take two seconds.
DELAY_VARIABLE = "POPBS_PROGRESS_DELAY"
REDRAW = 0.2
WIDTH = 20
_CLEAR = "\r\x1b[K"  # carriage return, then erase to the end of the line


class Display:
    def __init__(
        self,
        stream: TextIO,
        delay: float = DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.delay = delay
        self.clock = clock
        self.started = clock()
        self.drawn = False
        self.last = 0.0

    def show(self, name: str, done: int, total: int) -> None:
        now = self.clock()
        if now - self.started < self.delay:
            return
        if self.drawn and now - self.last < REDRAW and done < total:
            return
        self.last = now
        share = min(done / total, 1.0) if total > 0 else 1.0
        bar = "#" * int(share * WIDTH)
        mib = 1 << 20
        self.stream.write(
            f"{_CLEAR}popbs: reading {name} [{bar:<{WIDTH}}] {share:4.0%} "
            f"{done / mib:.0f}/{total / mib:.0f} MiB"
        )
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self.drawn = False


_display: Display | None = None


def enable(stream: TextIO, environ: Mapping[str, str]) -> None:
    """Draw on `stream` if it is a terminal."""
    global _display
    if not stream.isatty():
        _display = None
        return
    try:
        delay = float(environ.get(DELAY_VARIABLE) or DELAY)
    except ValueError:
        delay = DELAY
    _display = Display(stream, delay)


def clear_first(record: logging.LogRecord) -> bool:
    """A logging filter: wipe the line before a message is written below it."""
    if _display is not None:
        _display.clear()
    return True


@contextmanager
def reading(name: str, start: int, end: int) -> Iterator[Callable[[int], None]]:
    """A callback taking each offset reached in a file read from `start` to
    `end`; the line is wiped when the read ends."""
    display = _display
    if display is None:
        yield _ignore
        return

    def advance(offset: int) -> None:
        display.show(name, offset - start, end - start)

    try:
        yield advance
    finally:
        display.clear()


def _ignore(offset: int) -> None:
    pass
