"""The jobs behind the commands: sync, merge, prune, publish, list, check."""

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from popbs_tools import fsutil, grants, locking, postfix, publish, recognise, state
from popbs_tools.addresses import normalise
from popbs_tools.errors import InputError, MapError, StateError
from popbs_tools.grants import Grants
from popbs_tools.scan import Found, Interpreter, JournalSource, scan_configured
from popbs_tools.scanner import CHECKPOINT, Checkpoint
from popbs_tools.settings import Settings

log = logging.getLogger(__name__)

# Manual commands wait this long for a running sync rather than give up.
MANUAL_WAIT = 60.0


@dataclass(frozen=True)
class Change:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    written: bool = False
    published: bool = False


def interpreter(settings: Settings) -> Interpreter:
    recogniser = recognise.build(settings.rules, settings.disabled)
    return Interpreter(recogniser, settings.policy, settings.now)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise MapError(f"cannot read {path}: {error.strerror}") from None


def update(
    settings: Settings,
    edit: Callable[[Grants], Grants],
    publish_map: bool,
    force: bool = False,
) -> Change:
    """Apply `edit` and the TTL to the grant file; write only if something changed.

    With `publish_map`, the map is rebuilt too when it is missing or older
    than the grant file (a first run, or a run killed before postmap), or
    always with `force`.
    """
    old_data = _read(settings.map_path)
    old = grants.parse(old_data, str(settings.map_path)) if old_data else {}

    current = _sanitised(old, settings)
    new = _capped(grants.prune(edit(current), settings.ttl, settings.now), settings)
    new_data = grants.render(new)
    change = Change(
        added=tuple(sorted(set(new) - set(old))),
        removed=tuple(sorted(set(old) - set(new))),
    )

    unchanged = new_data == old_data
    if publish_map:
        if unchanged and not force and _map_is_current(settings):
            return change
        publish.publish(
            settings.map_path, new_data, settings.map_type, settings.postmap
        )
        return Change(change.added, change.removed, written=True, published=True)
    if unchanged:
        return change
    try:
        fsutil.replace(settings.map_path, new_data)
    except OSError as error:
        raise MapError(f"cannot write {settings.map_path}: {error.strerror}") from None
    return Change(change.added, change.removed, written=True)


def _map_is_current(settings: Settings) -> bool:
    if settings.map_type_setting is None:
        # Spares the postconf run (~10 ms) of a cron run that changes nothing.
        since = postfix.settled_since()
        if since is not None and publish.is_current_since(settings.map_path, since):
            return True
    return publish.is_current(settings.map_path, settings.map_type)


def _capped(table: Grants, settings: Settings) -> Grants:
    """At most --max-grants grants: the newest are kept."""
    limit = settings.max_grants
    if not limit or len(table) <= limit:
        return table
    newest = sorted(table, key=lambda key: table[key], reverse=True)[:limit]
    log.warning(
        "%d grants exceed --max-grants %d: the %d oldest were dropped",
        len(table),
        limit,
        len(table) - limit,
    )
    return {key: table[key] for key in newest}


def _sanitised(current: Grants, settings: Settings) -> Grants:
    """The grant file's entries as popbs itself would have written them.

    A hand-edited file may hold a never-grant address or a time in the future
    (a grant that would outlive its TTL): neither reaches the map.
    """
    clean: Grants = {}
    for key, when in current.items():
        refusal = settings.policy.refusal(key)
        if refusal:
            log.warning("dropping %s from %s: %s", key, settings.map_path, refusal)
            continue
        clean[key] = min(when, int(settings.now))
    return clean


def _lock_path(settings: Settings) -> Path:
    lock = settings.state_dir / state.LOCK_FILE
    for path in (settings.state_dir, lock):
        problem = fsutil.unsafe(path)
        if problem:
            raise StateError(f"refusing to use {path}: {problem}")
    problem = fsutil.unsafe(settings.map_path)
    if problem:
        raise MapError(f"refusing to use {settings.map_path}: {problem}")
    state.prepare_dir(settings.state_dir)
    return lock


def sync(settings: Settings, reset: bool = False) -> Change | None:
    """The cron job. Returns None when another run holds the lock."""
    try:
        with locking.held(_lock_path(settings)):
            if reset:
                state.reset(settings.state_dir)
            return _sync_locked(settings)
    except locking.Busy:
        log.info("another popbs run holds the lock; nothing done")
        return None


def _sync_locked(settings: Settings) -> Change:
    saved = state.load(settings.state_dir)
    reader = interpreter(settings)
    every = min(CHECKPOINT, settings.max_read) if settings.max_read else CHECKPOINT
    found, current = scan_configured(
        reader, settings.logs, journal_source(settings), saved, False, every
    )

    latest: Grants = {}
    read_so_far = 0
    for item in found:
        if isinstance(item, Found):
            if item.time > latest.get(item.ip, -1):
                latest[item.ip] = item.time
            continue
        # A checkpoint in a long read: publish what was found so far and save
        # the position, so that a run killed later still moved forward.
        read_so_far += every
        _commit_checkpoint(settings, reader, current, item, latest)
        latest = {}
        if settings.max_read and read_so_far >= settings.max_read:
            log.info("read %d bytes (--max-read); the rest next run", read_so_far)
            found.close()  # type: ignore[attr-defined]
            return Change(published=True)

    assert reader.tracker is not None
    reader.tracker.expire(
        settings.now, settings.max_session, settings.ttl, settings.disabled
    )
    connected = {
        key for key in reader.tracker.connected() if not settings.policy.refusal(key)
    }

    def edit(current: Grants) -> Grants:
        merged = grants.merge(current, latest.items(), settings.now)
        # A client still connected keeps its grant. Refreshing only once half
        # the TTL has gone keeps postmap from running every minute for it.
        stale = settings.now - settings.ttl / 2
        for key in connected:
            if merged.get(key, -1) <= stale:
                merged[key] = int(settings.now)
        return merged

    change = update(settings, edit, publish_map=True)

    # Offsets are saved last: a run killed before this reads the same lines
    # again, and merging them twice changes nothing.
    if current != saved:
        state.save(settings.state_dir, current)
    return change


def _commit_checkpoint(
    settings: Settings,
    reader: Interpreter,
    current: state.State,
    checkpoint: Checkpoint,
    latest: Grants,
) -> None:
    """Publish the logins found so far, then save the state as of `checkpoint`."""
    update(
        settings,
        lambda grants_now: grants.merge(grants_now, latest.items(), settings.now),
        publish_map=True,
    )
    snapshot = current.copy()
    snapshot.logs[checkpoint.log] = checkpoint.position
    if checkpoint.finished is None:
        snapshot.finished.pop(checkpoint.log, None)
    else:
        snapshot.finished[checkpoint.log] = checkpoint.finished
    assert reader.tracker is not None and reader.pairs is not None
    snapshot.learned = sorted(reader.tracker.learned)
    snapshot.pending = reader.pairs.saved(settings.now)
    state.save(settings.state_dir, snapshot)


def journal_source(settings: Settings) -> JournalSource | None:
    if not settings.journal:
        return None
    # A first run reads back one TTL: older logins would be pruned anyway.
    return JournalSource(settings.journal_files, settings.now - settings.ttl)


def scan_with_state(
    settings: Settings,
    from_start: bool,
    emit: Callable[[Found], None],
    reset: bool = False,
) -> None:
    """Report logins since the saved offsets, then save the new offsets."""
    try:
        with locking.held(_lock_path(settings), wait=MANUAL_WAIT):
            if reset:
                state.reset(settings.state_dir)
            saved = state.load(settings.state_dir)
            found, current = scan_configured(
                interpreter(settings),
                settings.logs,
                journal_source(settings),
                saved,
                from_start,
            )
            for login in found:
                if isinstance(login, Found):
                    emit(login)
            if current != saved:
                state.save(settings.state_dir, current)
    except locking.Busy:
        raise StateError(
            f"another popbs run has held {settings.state_dir / state.LOCK_FILE} "
            f"for {MANUAL_WAIT:.0f}s; try again"
        ) from None


def scan_without_state(settings: Settings, from_start: bool) -> Iterator[Found]:
    saved = state.State() if from_start else _load_quietly(settings.state_dir)
    found, _ = scan_configured(
        interpreter(settings),
        settings.logs,
        journal_source(settings),
        saved,
        from_start,
    )
    return (item for item in found if isinstance(item, Found))


def _load_quietly(state_dir: Path) -> state.State:
    # --no-state: read the state, never repair or move anything.
    return state.load(state_dir, repair=False)


def locked_update(
    settings: Settings,
    edit: Callable[[Grants], Grants],
    publish_map: bool,
    force: bool = False,
) -> Change:
    try:
        with locking.held(_lock_path(settings), wait=MANUAL_WAIT):
            return update(settings, edit, publish_map, force)
    except locking.Busy:
        raise StateError(
            f"another popbs run has held the lock for {MANUAL_WAIT:.0f}s; try again"
        ) from None


def publish_now(settings: Settings) -> None:
    """Rebuild the map from the grant file, pruned (an empty one if absent)."""
    locked_update(settings, lambda current: current, publish_map=True, force=True)


def parse_entries(
    lines: Iterable[str], origin: str, now: float
) -> list[tuple[str, float]]:
    """`IP [TIME ...]` lines or scan's JSON lines; raise InputError on a bad one."""
    entries: list[tuple[str, float]] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        raw_ip, raw_time = _fields(text)
        key = normalise(raw_ip) if raw_ip else None
        when = _number(raw_time, now)
        if key is None or when is None:
            raise InputError(
                f"{origin}, line {number}: expected 'IP [TIME]' or scan's JSON, "
                f"found {text[:60]!r}; nothing was merged"
            )
        entries.append((key, when))
    return entries


def _fields(text: str) -> tuple[str | None, object]:
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            return None, None
        if not isinstance(record, dict) or not isinstance(record.get("ip"), str):
            return None, None
        return record["ip"], record.get("time")
    fields = text.split()
    return fields[0], fields[1] if len(fields) > 1 else None


def _number(raw: object, now: float) -> float | None:
    if raw is None:
        return now
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw) if raw >= 0 else None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return float(raw)
    return None
