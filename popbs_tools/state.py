"""What popbs remembers between runs, versioned and checksummed.

The position in each log, the cursor in each journal, and the IMAP sessions
still open (see scan.OpenSessions).
"""

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from popbs_tools import fsutil
from popbs_tools.errors import StateError

log = logging.getLogger(__name__)

FORMAT = "popbs-state"
VERSION = 1
STATE_FILE = "state.json"
PREVIOUS_FILE = "state.json.prev"
LOCK_FILE = "lock"


@dataclass(frozen=True)
class Position:
    """Where reading stopped in one generation of a log.

    A generation is recognised by its content: a digest of its first
    `head_len` bytes and of the `tail_len` bytes just before `offset`.
    Device and inode are kept as hints for the humans reading `status`.
    """

    offset: int
    head: str
    head_len: int
    tail: str
    tail_len: int
    dev: int = 0
    ino: int = 0


# Matches any file: the next one is read from its start.
START = Position(
    0, hashlib.sha256(b"").hexdigest(), 0, hashlib.sha256(b"").hexdigest(), 0
)

Positions = dict[str, Position]


@dataclass
class Session:
    """An IMAP session whose login was seen and whose end was not, yet."""

    ip: str
    user: str
    server: str
    since: float
    count: int = 1


@dataclass
class State:
    logs: Positions = field(default_factory=dict)
    cursors: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    # Servers seen logging the end of a session in a way it can be matched to
    # its login: only their sessions are tracked (see tracking.py).
    learned: list[str] = field(default_factory=list)
    # Client addresses whose login line has not come yet (see correlate.py).
    pending: dict[str, list[object]] = field(default_factory=dict)
    # Where each log's last rotated generation was read to: a writer may
    # still append to it (see scanner.LogScan).
    finished: Positions = field(default_factory=dict)
    # Since when each missing log has been missing (see scan.MISSING_WARN).
    missing: dict[str, float] = field(default_factory=dict)
    # Hand grants (address: until when) and revocations (address: since
    # when); see manual.py.
    manual: dict[str, float] = field(default_factory=dict)
    revoked: dict[str, float] = field(default_factory=dict)
    # When each log was last seen rotated, by the run's clock (for `status`).
    rotated: dict[str, float] = field(default_factory=dict)

    def copy(self) -> "State":
        return State(
            dict(self.logs),
            dict(self.cursors),
            {key: Session(**asdict(s)) for key, s in self.sessions.items()},
            list(self.learned),
            dict(self.pending),
            dict(self.finished),
            dict(self.missing),
            dict(self.manual),
            dict(self.revoked),
            dict(self.rotated),
        )


BODY = (
    "logs",
    "cursors",
    "sessions",
    "learned",
    "pending",
    "finished",
    "missing",
    "manual",
    "revoked",
    "rotated",
)


def _position(fields: Any) -> Position:
    position = Position(**fields)
    numbers = (position.offset, position.head_len, position.tail_len)
    if not all(type(n) is int and n >= 0 for n in numbers):
        raise ValueError("an offset or length is not a whole number")
    if not all(isinstance(d, str) for d in (position.head, position.tail)):
        raise ValueError("a digest is not text")
    return position


def _session(fields: Any) -> Session:
    session = Session(**fields)
    texts = (session.ip, session.user, session.server)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("a session field is not text")
    if not isinstance(session.since, int | float) or type(session.count) is not int:
        raise ValueError("a session time or count is not a number")
    return session


def _pending(entries: Any) -> dict[str, list[object]]:
    if not isinstance(entries, dict):
        raise ValueError("pending addresses are not a table")
    for key, value in entries.items():
        good = (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], int | float)
        )
        if not good:
            raise ValueError(f"pending address {key!r} is malformed")
    return dict(entries)


def _times(entries: Any, what: str) -> dict[str, float]:
    if not isinstance(entries, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in entries.values()
    ):
        raise ValueError(f"{what} are malformed")
    return {str(k): float(v) for k, v in entries.items()}


def checksum_of(document: dict[str, Any]) -> str:
    # Only the parts present: a file written before a part was added (such
    # as "rotated") was summed without it, and stays readable.
    return _checksum({key: document[key] for key in BODY if key in document})


def _checksum(logs: dict[str, Any]) -> str:
    canonical = json.dumps(logs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def prepare_dir(state_dir: Path) -> None:
    """Create the state directory (0700) if needed; refuse anything but a directory."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise StateError(
            f"cannot create state directory {state_dir}: {error.strerror}"
        ) from None
    if not state_dir.is_dir() or state_dir.is_symlink():
        raise StateError(f"state directory {state_dir} is not a directory")


class Corrupt(ValueError):
    """A state file that cannot be read as one."""


def load(state_dir: Path, repair: bool = True) -> State:
    """The saved state; the previous good copy if the state file is corrupt.

    A corrupt file is never read as "no state" (which would start every log
    from the top). Without a good previous copy the run is refused until an
    admin acts (`popbs sync --reset`, or moving the file away).
    """
    path = state_dir / STATE_FILE
    previous = state_dir / PREVIOUS_FILE
    try:
        return _read(path)
    except FileNotFoundError:
        # Moved away after a fallback, or lost: the previous copy still says
        # where reading stood, which beats starting over.
        try:
            state = _read(previous)
        except (FileNotFoundError, Corrupt):
            return State()
        log.warning("%s is missing; using the previous copy, %s", path, previous)
        return state
    except Corrupt as error:
        problem = f"{path} is corrupt ({error})"

    try:
        state = _read(previous)
    except (FileNotFoundError, Corrupt):
        raise StateError(
            f"{problem} and there is no good previous copy; it is kept for "
            "inspection: run with --reset to read the logs again as on a "
            "first run"
        ) from None
    if repair:
        # Keep the corrupt file for inspection: the next save takes its name.
        kept = state_dir / f"{STATE_FILE}.corrupt"
        with contextlib.suppress(OSError):
            os.replace(path, kept)
        log.warning("%s; using the previous copy (kept it as %s)", problem, kept)
    else:
        log.warning("%s; using the previous copy", problem)
    return state


def _read(path: Path) -> State:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as error:
        raise StateError(f"cannot read {path}: {error.strerror}") from None

    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError("not a popbs state file")
        version = document["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"version {version!r} is not a number")
        if version > VERSION:
            raise StateError(
                f"{path} was written by a newer popbs (state version {version}); "
                "upgrade popbs, or move the file away to start afresh"
            )
        if document.get("checksum") != checksum_of(document):
            raise ValueError("checksum mismatch")
        cursors = document.get("cursors") or {}
        learned = document.get("learned") or []
        if not all(isinstance(c, str) for c in cursors.values()):
            raise ValueError("a journal cursor is not text")
        if not all(isinstance(name, str) for name in learned):
            raise ValueError("a server name is not text")
        return State(
            logs={name: _position(f) for name, f in document["logs"].items()},
            cursors=dict(cursors),
            sessions={
                key: _session(f) for key, f in (document.get("sessions") or {}).items()
            },
            learned=list(learned),
            pending=_pending(document.get("pending") or {}),
            finished={
                name: _position(f)
                for name, f in (document.get("finished") or {}).items()
            },
            missing=_times(document.get("missing") or {}, "missing-log times"),
            manual=_times(document.get("manual") or {}, "hand grants"),
            revoked=_times(document.get("revoked") or {}, "revocations"),
            rotated=_times(document.get("rotated") or {}, "rotation times"),
        )
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        raise Corrupt(str(error) or type(error).__name__) from None


def _keep_previous(path: Path, previous: Path) -> None:
    """Make `previous` the current state file, by a hard link renamed into place.

    Only a file that reads as good state becomes the previous copy.
    """
    try:
        _read(path)
    except (FileNotFoundError, Corrupt, StateError):
        return
    import secrets

    link = previous.with_name(f".{previous.name}.{secrets.token_hex(4)}")
    os.link(path, link)
    os.replace(link, previous)


def reset(state_dir: Path) -> None:
    """Forget the state on purpose: the next run is a first run.

    Hand grants and revocations are the admin's decisions, not positions in
    a log: they are kept if the state (or its previous copy) still reads.
    """
    kept = State()
    for name in (STATE_FILE, PREVIOUS_FILE):
        try:
            old = _read(state_dir / name)
        except (FileNotFoundError, Corrupt, StateError):
            continue
        kept = State(manual=old.manual, revoked=old.revoked)
        break
    for name in (STATE_FILE, PREVIOUS_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state_dir / name)
    if kept.manual or kept.revoked:
        save(state_dir, kept)
    log.info("state in %s reset", state_dir)


def save(state_dir: Path, state: State) -> None:
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "logs": {name: asdict(p) for name, p in sorted(state.logs.items())},
        "cursors": dict(sorted(state.cursors.items())),
        "sessions": {key: asdict(s) for key, s in sorted(state.sessions.items())},
        "learned": sorted(state.learned),
        "pending": dict(sorted(state.pending.items())),
        "finished": {name: asdict(p) for name, p in sorted(state.finished.items())},
        "missing": dict(sorted(state.missing.items())),
        "manual": dict(sorted(state.manual.items())),
        "revoked": dict(sorted(state.revoked.items())),
        "rotated": dict(sorted(state.rotated.items())),
    }
    document["checksum"] = checksum_of(document)
    data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
    fsutil.remove_stale_temps(state_dir, STATE_FILE)
    path = state_dir / STATE_FILE
    try:
        _keep_previous(path, state_dir / PREVIOUS_FILE)
        fsutil.replace(path, data, mode=0o600)
    except OSError as error:
        raise StateError(
            f"cannot save state in {state_dir}: {error.strerror}"
        ) from None
    log.debug("saved state for %d log(s)", len(state.logs))
