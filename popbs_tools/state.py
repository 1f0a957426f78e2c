"""What was read of each log: the saved position, versioned and checksummed."""

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from popbs_tools import fsutil
from popbs_tools.errors import StateError

log = logging.getLogger(__name__)

FORMAT = "popbs-state"
VERSION = 1
STATE_FILE = "state.json"
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


def _position(fields: Any) -> Position:
    position = Position(**fields)
    numbers = (position.offset, position.head_len, position.tail_len)
    if not all(type(n) is int and n >= 0 for n in numbers):
        raise ValueError("an offset or length is not a whole number")
    if not all(isinstance(d, str) for d in (position.head, position.tail)):
        raise ValueError("a digest is not text")
    return position


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


def load(state_dir: Path) -> Positions:
    path = state_dir / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise StateError(f"cannot read {path}: {error.strerror}") from None

    try:
        document = json.loads(data)
        if document.get("format") != FORMAT:
            raise ValueError("not a popbs state file")
        version = document["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValueError(f"version {version!r} is not a number")
        if version > VERSION:
            raise StateError(
                f"{path} was written by a newer popbs (state version {version}); "
                "upgrade popbs, or move the file away to start afresh"
            )
        logs = document["logs"]
        if document.get("checksum") != _checksum(logs):
            raise ValueError("checksum mismatch")
        return {name: _position(fields) for name, fields in logs.items()}
    except StateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise StateError(
            f"{path} is corrupt ({error}); it is kept for inspection: move it away "
            "to read the logs again from the start"
        ) from None


def save(state_dir: Path, positions: Positions) -> None:
    logs = {name: asdict(position) for name, position in sorted(positions.items())}
    document = {
        "format": FORMAT,
        "version": VERSION,
        "logs": logs,
        "checksum": _checksum(logs),
    }
    data = json.dumps(document, indent=1, sort_keys=True).encode() + b"\n"
    try:
        fsutil.replace(state_dir / STATE_FILE, data, mode=0o600)
    except OSError as error:
        raise StateError(
            f"cannot save state in {state_dir}: {error.strerror}"
        ) from None
    log.debug("saved state for %d log(s)", len(positions))
