"""The last sync's outcome, kept beside the state for `popbs status`.

A file of its own rather than a part of the state: a run that fails before it
can save the state (an unreadable log, a postmap error) must still say so.
"""

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from popbs_tools import fsutil
from popbs_tools.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, PopbsError

log = logging.getLogger(__name__)

LAST_RUN_FILE = "last-run.json"

T = TypeVar("T")


@dataclass(frozen=True)
class LastRun:
    command: str
    time: float  # the run's clock (settings.now)
    result: str  # "ok" or "error"
    exit_code: int
    message: str = ""
    seconds: float = 0.0


def recorded(
    state_dir: Path, now: float, command: str, run: Callable[[], T | None]
) -> T | None:
    """Call `run` and record how it ended; errors pass on unchanged.

    `run` returning None means another run held the lock: such a run
    touches nothing (popbs(8)), so the record stays the holder's to write.
    """
    started = time.monotonic()

    def note(result: str, code: int, message: str = "") -> None:
        elapsed = round(time.monotonic() - started, 3)
        save(state_dir, LastRun(command, now, result, code, message, elapsed))

    try:
        value = run()
    except PopbsError as error:
        note("error", error.exit_code, str(error))
        raise
    except KeyboardInterrupt:
        note("error", EXIT_INTERRUPTED, "interrupted")
        raise
    except Exception as error:
        note("error", EXIT_INTERNAL, f"internal error: {type(error).__name__}")
        raise
    if value is not None:
        note("ok", 0)
    return value


def save(state_dir: Path, run: LastRun) -> None:
    # Only into a state directory that sync itself would use: never create
    # one, nor write through another user's link.
    if not state_dir.is_dir() or state_dir.is_symlink() or fsutil.unsafe(state_dir):
        return
    path = state_dir / LAST_RUN_FILE
    if fsutil.unsafe(path):
        return
    data = json.dumps(asdict(run), sort_keys=True).encode() + b"\n"
    try:
        fsutil.remove_stale_temps(state_dir, LAST_RUN_FILE)
        fsutil.replace(path, data, mode=0o600)
    except OSError as error:
        # The run's own outcome matters more than this note about it.
        log.info("cannot record the run in %s: %s", path, error.strerror)


def load(state_dir: Path) -> LastRun | None:
    """The last recorded run, or None if there is none (or it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        record = json.loads((state_dir / LAST_RUN_FILE).read_bytes())
        if isinstance(record, dict):
            return LastRun(**record)
    return None
