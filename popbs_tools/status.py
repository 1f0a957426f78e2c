"""What `popbs status` reports: where each log was read to, the grants, the lock.

Everything here only reads: no lock is taken, no file is created or repaired,
so that status can run at any time beside a sync, and as a user who may read
but not write.
"""

import fcntl
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from popbs_tools import grants, lastrun, postfix, scanner, state
from popbs_tools.errors import PopbsError
from popbs_tools.lastrun import LastRun
from popbs_tools.settings import Settings
from popbs_tools.timestamps import format_local

PROC_LOCKS = Path("/proc/locks")


@dataclass(frozen=True)
class Rotation:
    """The last rotated generation of a log, as the state remembers it."""

    file: str | None  # the rotated file that holds it now, if one does
    offset: int  # where reading it stopped
    dev: int
    ino: int


@dataclass(frozen=True)
class LogStatus:
    path: str
    offset: int | None  # None: never read
    size: int | None  # None: the file cannot be looked at (see problem)
    problem: str | None
    dev: int | None  # the read generation's device and inode (hints)
    ino: int | None
    # Whether the file under the name now is the generation read.
    same_file: bool | None
    rotated: float | None  # when a run last saw the log rotated
    last_rotation: Rotation | None
    missing_since: float | None


@dataclass(frozen=True)
class MapStatus:
    path: str
    built: str | None  # the file postmap built, None for map type none
    grants: int | None  # lines in the grant file
    valid: int | None  # of those, not yet expired
    age: float | None  # seconds since the map was last built
    problem: str | None


@dataclass(frozen=True)
class LockStatus:
    path: str
    held: bool | None  # None: unknown (see problem)
    holder: int | None  # PID, when /proc/locks tells
    problem: str | None = None


@dataclass(frozen=True)
class Status:
    state_dir: str
    now: float
    logs: list[LogStatus]
    journals: dict[str, str]
    map: MapStatus
    lock: LockStatus
    last_run: LastRun | None
    state_problem: str | None = None


def collect(settings: Settings) -> Status:
    saved, problem = _state(settings.state_dir)
    return Status(
        state_dir=str(settings.state_dir),
        now=settings.now,
        logs=[_log(path, saved, settings.rotated) for path in settings.logs],
        journals=dict(saved.cursors),
        map=_map(settings),
        lock=lock_status(settings.state_dir / state.LOCK_FILE),
        last_run=lastrun.load(settings.state_dir),
        state_problem=problem,
    )


def _state(state_dir: Path) -> tuple[state.State, str | None]:
    if not state_dir.exists():
        return state.State(), "no state yet: popbs sync has not run"
    try:
        return state.load(state_dir, repair=False), None
    except PopbsError as error:
        return state.State(), str(error)


def _log(path: Path, saved: state.State, globs: tuple[str, ...]) -> LogStatus:
    key = str(path)
    position = saved.logs.get(key)
    size: int | None = None
    problem: str | None = None
    same: bool | None = None
    try:
        info = os.stat(path)
        size = info.st_size
        if position is not None and position.ino:
            same = (info.st_dev, info.st_ino) == (position.dev, position.ino)
        scanner.open_log(path).close()
    except OSError as error:
        problem = error.strerror
    finished = saved.finished.get(key)
    return LogStatus(
        path=key,
        offset=position.offset if position else None,
        size=size,
        problem=problem,
        dev=position.dev if position and position.ino else None,
        ino=position.ino if position and position.ino else None,
        same_file=same,
        rotated=saved.rotated.get(key),
        last_rotation=_rotation(path, finished, globs) if finished else None,
        missing_since=saved.missing.get(key),
    )


def _rotation(path: Path, finished: state.Position, globs: tuple[str, ...]) -> Rotation:
    holder = None
    for sibling in scanner.rotated_siblings(path, globs):
        try:
            info = sibling.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (finished.dev, finished.ino):
            holder = str(sibling)
            break
    return Rotation(holder, finished.offset, finished.dev, finished.ino)


def _map(settings: Settings) -> MapStatus:
    problem = None
    try:
        map_type = settings.map_type
    except PopbsError as error:
        map_type, problem = "none", str(error)
    built = postfix.map_file(settings.map_path, map_type)
    count = valid = None
    try:
        table = grants.load(settings.map_path)
        count = len(table)
        valid = len(grants.prune(table, settings.ttl, settings.now))
    except PopbsError as error:
        problem = problem or str(error)
    age = None
    try:
        age = settings.now - os.stat(built or settings.map_path).st_mtime
    except FileNotFoundError:
        problem = problem or f"{built or settings.map_path} does not exist"
    except OSError as error:
        problem = problem or f"cannot look at {built}: {error.strerror}"
    return MapStatus(
        str(settings.map_path),
        str(built) if built else None,
        count,
        valid,
        age,
        problem,
    )


def lock_status(path: Path) -> LockStatus:
    """Whether a run holds the lock now, without ever taking it for long.

    The kernel lists flock locks in /proc/locks by device and inode; reading
    that disturbs nobody. Without /proc, a shared lock is tried and dropped at
    once: a sync starting in that instant would skip its turn.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return LockStatus(str(path), False, None)
    except OSError as error:
        return LockStatus(str(path), None, None, error.strerror)
    try:
        text = PROC_LOCKS.read_text()
    except OSError:
        return _try_lock(path)
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}"
    inode_only = False
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; a waiting
        # request is listed too, after "->", and holds nothing.
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        where, _, inode = fields[5].rpartition(":")
        if inode != str(info.st_ino):
            continue
        if where == device:
            pid = int(fields[4]) if fields[4].isdigit() else None
            return LockStatus(str(path), True, pid)
        inode_only = True
    if inode_only:
        # Overlay and some network file systems list another device than
        # stat gives: ask the lock itself.
        return _try_lock(path)
    return LockStatus(str(path), False, None)


def _try_lock(path: Path) -> LockStatus:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        return LockStatus(str(path), None, None, error.strerror)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return LockStatus(str(path), True, None)
    finally:
        os.close(fd)
    return LockStatus(str(path), False, None)


def as_json(status: Status) -> dict[str, object]:
    return asdict(status)


LABEL = 11  # the width of the label column


def text_lines(status: Status) -> list[str]:
    """The status for humans: one item a line, values in one column."""
    lines = []
    for entry in status.logs:
        lines.append(_row("log", entry.path))
        lines += [_row("  " + label, value) for label, value in _log_rows(entry)]
    for name, cursor in sorted(status.journals.items()):
        lines.append(_row("journal", f"{name} at cursor {cursor[:40]}"))
    state_line = status.state_dir
    if status.state_problem:
        state_line += f": {status.state_problem}"
    lines.append(_row("state", state_line))
    lines.append(_row("last run", _last_run(status.last_run, status.now)))
    lines += _map_rows(status.map, status.now)
    lines.append(_row("lock", _lock(status.lock)))
    return lines


def _row(label: str, value: str) -> str:
    return f"{label:<{LABEL}}{value}"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    if seconds < 172800:
        return f"{seconds // 3600}h ago"
    return f"{seconds // 86400}d ago"


def _when(time: float, now: float) -> str:
    return f"{format_local(time)} ({_ago(now - time)})"


def _log_rows(entry: LogStatus) -> list[tuple[str, str]]:
    rows = []
    if entry.problem:
        rows.append(("file", f"cannot look at it: {entry.problem}"))
    if entry.offset is None:
        rows.append(("read", "not yet"))
    elif entry.same_file is False:
        rows.append(
            (
                "read",
                f"{entry.offset} bytes of the previous file; the one there now "
                f"has {entry.size} bytes (the next sync reads it)",
            )
        )
    elif entry.size is not None:
        left = entry.size - entry.offset
        rest = "all read" if left <= 0 else f"{left} to read"
        rows.append(("read", f"{entry.offset} of {entry.size} bytes ({rest})"))
    else:
        rows.append(("read", f"to offset {entry.offset}"))
    if entry.ino is not None:
        rows.append(("inode", f"{entry.ino} on device {entry.dev}"))
    if entry.missing_since is not None:
        rows.append(("missing", f"since {format_local(entry.missing_since)}"))
    rows.append(("rotated", _rotation_text(entry)))
    return rows


def _rotation_text(entry: LogStatus) -> str:
    parts = []
    if entry.rotated is not None:
        parts.append(f"seen {format_local(entry.rotated)}")
    previous = entry.last_rotation
    if previous is not None:
        name = previous.file or f"inode {previous.ino} (no longer found)"
        parts.append(f"{name} read to offset {previous.offset}")
    return "; ".join(parts) or "not seen"


def _last_run(run: LastRun | None, now: float) -> str:
    if run is None:
        return "none recorded"
    took = f" in {run.seconds:.2f}s" if run.seconds else ""
    when = f"{run.command} at {_when(run.time, now)}"
    if run.result == "ok":
        return f"{when}: ok{took}"
    return f"{when}: failed with exit code {run.exit_code}: {run.message}"


def _map_rows(entry: MapStatus, now: float) -> list[str]:
    rows = []
    if entry.grants is not None:
        count = f"{entry.grants} in {entry.path}"
        if entry.valid != entry.grants:
            count += f", {entry.valid} not expired"
        rows.append(_row("grants", count))
    built = entry.built or entry.path
    if entry.age is not None:
        rows.append(_row("map", f"{built}, built {_ago(entry.age)}"))
    if entry.problem:
        rows.append(_row("map", entry.problem))
    return rows


def _lock(entry: LockStatus) -> str:
    if entry.held is None:
        return f"unknown: {entry.problem}"
    if not entry.held:
        return "free"
    return f"held by PID {entry.holder}" if entry.holder else "held"
