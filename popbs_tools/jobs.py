"""The jobs behind the commands: sync, merge, prune, publish, list, check."""

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from popbs_tools import (
    audit,
    fsutil,
    grants,
    locking,
    manual,
    mtas,
    postfix,
    publish,
    recognise,
    state,
)
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
    # Granted before and after, with a new time.
    refreshed: tuple[str, ...] = ()
    # The grant file's table before and after the change.
    before: Grants = field(default_factory=dict)
    after: Grants = field(default_factory=dict)
    # A run stopped by --max-read: more is waiting to be read.
    more: bool = False


@dataclass(frozen=True)
class Entry:
    """One line given to `popbs merge`."""

    ip: str
    time: float
    # When the login began, if not at `time` (scan's JSON of a session's end).
    since: float | None = None


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
    old_data, new_data, change = planned(settings, edit)
    unchanged = new_data == old_data
    if publish_map:
        if unchanged and not force and _map_is_current(settings):
            return change
        mtas.publish_grants(settings, new_data)
        return replace(change, written=True, published=True)
    if unchanged:
        return change
    try:
        fsutil.replace(settings.map_path, new_data)
    except OSError as error:
        raise MapError(f"cannot write {settings.map_path}: {error.strerror}") from None
    return replace(change, written=True)


def planned(
    settings: Settings, edit: Callable[[Grants], Grants]
) -> tuple[bytes | None, bytes, Change]:
    """The grant file now, as it would be after `edit` and the TTL, and the
    change between them; writes nothing."""
    old_data = _read(settings.map_path)
    old = grants.parse(old_data, str(settings.map_path)) if old_data else {}

    current = _sanitised(old, settings)
    new = _capped(grants.prune(edit(current), settings.ttl, settings.now), settings)
    change = Change(
        added=tuple(sorted(set(new) - set(old), key=grants.sort_key)),
        removed=tuple(sorted(set(old) - set(new), key=grants.sort_key)),
        refreshed=tuple(
            sorted(
                (key for key in new if old.get(key, new[key]) != new[key]),
                key=grants.sort_key,
            )
        ),
        before=old,
        after=new,
    )
    return old_data, grants.render(new), change


def audited(change: Change, logins: dict[str, tuple[str, str]]) -> None:
    """The audit lines (--syslog) of a change that was written."""
    if change.written:
        audit.report(change.added, change.removed, change.before, change.after, logins)


def _map_is_current(settings: Settings) -> bool:
    if settings.mta != "postfix":
        return mtas.is_current(settings)
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
        # Postfix's mynetworks was checked when the grant was made.
        refusal = settings.policy.local_refusal(key)
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
    for directory in (settings.state_dir, settings.state_dir / manual.REQUESTS_DIR):
        problem = fsutil.foreign(directory)
        if problem:
            raise StateError(f"refusing to use {directory}: {problem}")
    return lock


@contextlib.contextmanager
def _waiting_lock(settings: Settings, then: str = "try again") -> Iterator[None]:
    """The lock for a command run by hand: wait for a running sync to hand it
    over (a watching one does at its next poll), at most MANUAL_WAIT."""
    try:
        with locking.held(_lock_path(settings), wait=MANUAL_WAIT):
            yield
    except locking.Busy:
        raise StateError(
            f"another popbs run has held {settings.state_dir / state.LOCK_FILE} "
            f"for {MANUAL_WAIT:.0f}s; {then}"
        ) from None


def sync(settings: Settings, reset: bool = False) -> Change | None:
    """The cron job. Returns None when another run holds the lock.

    With `reset`, an admin's recovery step, it waits for a running (or
    watching) sync to hand the lock over, as the other manual commands do.
    """
    if reset:
        with _waiting_lock(settings, "nothing was reset: try again"):
            state.reset(settings.state_dir)
            return _sync_locked(settings)
    try:
        with locking.held(_lock_path(settings)):
            return _sync_locked(settings)
    except locking.Busy:
        log.info("another popbs run holds the lock; nothing done")
        return None


# How often a watching sync looks at the logs: a stat() of each, so that a
# quiet hour costs well under a CPU second (see bench/watch.py).
POLL = 0.25
# A watching sync runs a pass at least this often, with nothing new in the
# logs, to prune grants whose TTL ran out and refresh open sessions.
IDLE_PASS = 30.0
# Where the journal's files change when anything is logged.
JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))


def watch(
    settings: Settings,
    length: float,
    poll: float = POLL,
    idle_pass: float = IDLE_PASS,
) -> Change | None:
    """The cron job, watching: sync, then publish each new login at once.

    Runs passes of sync under the lock until `length` seconds have passed
    since it started. A run started while another watches waits for it (the
    old one hands over at its next poll), so that consecutive cron minutes
    leave no gap; a third run that finds one already waiting leaves at once.
    A command that waits for the lock (publish, merge, ...) gets it too, and
    this run then waits to take it back.
    """
    origin = time.monotonic()
    deadline = origin + length
    lock = _lock_path(settings)
    change = None
    while True:
        with contextlib.ExitStack() as stack:
            with locking.first_in_line(lock) as first:
                if not first:
                    log.info("another popbs run waits for the lock; leaving it")
                    return change
                try:
                    wait = max(0.0, deadline - time.monotonic())
                    stack.enter_context(locking.held(lock, wait=wait))
                except locking.Busy:
                    log.info("another popbs run held the lock until the end")
                    return change
            change, handed_over = _watch_locked(
                settings, lock, origin, deadline, (poll, idle_pass)
            )
            # Handed to the next cron run, which watches on: this one is done.
            if not handed_over or locking.next_in_line(lock):
                return change
        # Handed to a command: let it take the lock before asking again, or
        # this run, polling faster, would win it back every time.
        while locking.waited_for(lock) and time.monotonic() < deadline:
            time.sleep(0.02)


def _watch_locked(
    settings: Settings,
    lock: Path,
    origin: float,
    deadline: float,
    pace: tuple[float, float],
) -> tuple[Change, bool]:
    """Passes until the deadline; also returns whether another run wanted the lock.

    `pace` is the poll interval and the longest time between two passes.
    Time in passes goes on from settings.now (--now, when given) as the
    monotonic clock does from `origin`: a step of the wall clock moves nothing.
    """
    poll, idle_pass = pace

    def at_now() -> Settings:
        now = settings.now + time.monotonic() - origin
        return dataclasses.replace(settings, now=now)

    # Taken before each pass: what changes during a pass is seen after it.
    seen = _fingerprint(settings)
    change = _sync_locked(at_now())
    last_pass = time.monotonic()
    while time.monotonic() + poll < deadline:
        # A backlog cut by --max-read: go on with it at once.
        if not change.more:
            time.sleep(poll)
        if locking.waited_for(lock):
            log.info("another popbs run waits for the lock; handing it over")
            return change, True
        now = _fingerprint(settings)
        quiet = now == seen and not change.more
        if quiet and time.monotonic() - last_pass < idle_pass:
            continue
        seen = now
        last_pass = time.monotonic()
        log.debug("watch: a pass")
        change = _sync_locked(at_now())
    return change, False


def _fingerprint(settings: Settings) -> tuple[object, ...]:
    """What changes when a log, the journal or the request queue does."""
    paths = [*settings.logs, settings.state_dir / manual.REQUESTS_DIR]
    if settings.journal:
        paths += settings.journal_files or [
            path for directory in JOURNAL_DIRS for path in directory.glob("*/*.journal")
        ]
    marks: list[object] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            marks.append(None)
            continue
        marks.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(marks)


def _sync_locked(settings: Settings) -> Change:
    saved = state.load(settings.state_dir)
    reader = interpreter(settings)
    every = min(CHECKPOINT, settings.max_read) if settings.max_read else CHECKPOINT
    found, current = scan_logs(settings, reader, saved, False, every)

    latest: Grants = {}
    # When the newest login of each address began (a session's end is
    # logged later), for revocations.
    began: dict[str, float] = {}
    # The user and server of the newest login of each address, for --syslog.
    logins: dict[str, tuple[str, str]] = {}
    read_so_far = 0
    for item in found:
        if isinstance(item, Found):
            if item.time > latest.get(item.ip, -1):
                latest[item.ip] = item.time
                logins[item.ip] = (item.user, item.server)
            start = item.time if item.since is None else item.since
            began[item.ip] = max(start, began.get(item.ip, -1))
            continue
        # A checkpoint in a long read: publish what was found so far and save
        # the position, so that a run killed later still moved forward.
        read_so_far += every
        _commit_checkpoint(settings, reader, current, item, latest, logins, began)
        latest = {}
        if settings.max_read and read_so_far >= settings.max_read:
            log.info("read %d bytes (--max-read); the rest next run", read_so_far)
            found.close()  # type: ignore[attr-defined]
            # Grants and revocations asked for meanwhile do not wait for
            # the rest of the backlog.
            _apply_requests(settings)
            return Change(published=True, more=True)

    # Grants and revocations queued by hand meanwhile (see manual.py).
    requests = manual.queued(settings.state_dir)
    fresh = manual.apply(requests, current, settings.policy)
    logins.update(manual.audit_names(requests))

    edit = sync_edit(settings, reader, current, latest, began, fresh)
    change = update(settings, edit, publish_map=True)
    audited(change, logins)

    # Offsets are saved last: a run killed before this reads the same lines
    # again, and merging them twice changes nothing. Requests are removed
    # after that, and applying one twice changes nothing either.
    if current != saved:
        state.save(settings.state_dir, current)
    manual.done(requests)
    return change


def sync_edit(
    settings: Settings,
    reader: Interpreter,
    current: state.State,
    latest: Grants,
    began: dict[str, float],
    fresh: set[str],
) -> Callable[[Grants], Grants]:
    """What a sync does to the grants once the logs are read.

    Revocations and hand grants in `current` apply (and expire there).
    """
    logins = manual.not_revoked(latest.items(), current, began)
    manual.forget_revoked_sessions(current)
    assert reader.tracker is not None
    reader.tracker.expire(
        settings.now, settings.max_session, settings.ttl, settings.disabled
    )
    # Postfix's mynetworks was checked when the session's grant was made.
    connected = {
        key
        for key in reader.tracker.connected()
        if not settings.policy.local_refusal(key)
    }

    def edit(table: Grants) -> Grants:
        merged = grants.merge(table, logins, settings.now)
        # A client still connected keeps its grant. Refreshing only once half
        # the TTL has gone keeps postmap from running every minute for it.
        stale = settings.now - settings.ttl / 2
        for key in connected:
            if merged.get(key, -1) <= stale:
                merged[key] = int(settings.now)
        return manual.adjust(
            merged, current, settings.now, settings.ttl, settings.policy, fresh
        )

    return edit


def _commit_checkpoint(
    settings: Settings,
    reader: Interpreter,
    current: state.State,
    checkpoint: Checkpoint,
    latest: Grants,
    logins: dict[str, tuple[str, str]],
    began: dict[str, float],
) -> None:
    """Publish the logins found so far, then save the state as of `checkpoint`."""
    granted = manual.not_revoked(latest.items(), current, began)
    change = update(
        settings,
        lambda table: grants.merge(table, granted, settings.now),
        publish_map=True,
    )
    audited(change, logins)
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


def scan_logs(
    settings: Settings,
    reader: Interpreter,
    saved: state.State,
    from_start: bool,
    checkpoint_every: int = 0,
) -> tuple[Iterator[Found | Checkpoint], state.State]:
    """scan_configured on the logs, journal and rotated places of `settings`."""
    return scan_configured(
        reader,
        settings.logs,
        journal_source(settings),
        saved,
        from_start,
        checkpoint_every,
        settings.rotated,
    )


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
    with _waiting_lock(settings):
        if reset:
            state.reset(settings.state_dir)
        saved = state.load(settings.state_dir)
        found, current = scan_logs(settings, interpreter(settings), saved, from_start)
        for login in found:
            if isinstance(login, Found):
                emit(login)
        if current != saved:
            state.save(settings.state_dir, current)


def scan_without_state(settings: Settings, from_start: bool) -> Iterator[Found]:
    saved = state.State() if from_start else _load_quietly(settings.state_dir)
    found, _ = scan_logs(settings, interpreter(settings), saved, from_start)
    return (item for item in found if isinstance(item, Found))


def _load_quietly(state_dir: Path) -> state.State:
    # --no-state: read the state, never repair or move anything.
    return state.load(state_dir, repair=False)


def merge_logins(
    settings: Settings, entries: list[Entry], publish_map: bool = False
) -> Change:
    """Merge logins given by hand, as a sync merges those it reads.

    A revoked address stays revoked unless its login began after the
    revocation (which it then lifts).
    """
    logins = [(entry.ip, entry.time) for entry in entries]
    began: dict[str, float] = {}
    for entry in entries:
        start = entry.time if entry.since is None else entry.since
        began[entry.ip] = max(start, began.get(entry.ip, -1))
    with _waiting_lock(settings):
        saved = state.load(settings.state_dir)
        current = saved.copy()
        kept = manual.not_revoked(logins, current, began)
        change = update(
            settings,
            lambda table: grants.merge(table, kept, settings.now),
            publish_map,
        )
        if current != saved:
            state.save(settings.state_dir, current)
        return change


def locked_update(
    settings: Settings,
    edit: Callable[[Grants], Grants],
    publish_map: bool,
    force: bool = False,
) -> Change:
    with _waiting_lock(settings):
        return update(settings, edit, publish_map, force)


def request(settings: Settings, wanted: manual.Request) -> Change | None:
    """Queue a grant or revocation, and publish it unless a running sync does.

    Returns the change when this command applied it, None when a sync that
    held the lock meanwhile did. Raises StateError if neither happened within
    MANUAL_WAIT seconds: the request then stays queued for the next run.
    """
    lock = _lock_path(settings)
    queued = manual.submit(settings.state_dir, wanted)
    deadline = time.monotonic() + MANUAL_WAIT
    while True:
        try:
            with locking.held(lock):
                return _apply_requests(settings)
        except locking.Busy:
            if not queued.exists():
                log.info("the running popbs sync applied the request")
                return None
            if time.monotonic() >= deadline:
                raise StateError(
                    f"another popbs run has held {lock} for {MANUAL_WAIT:.0f}s; "
                    f"the request is queued ({queued.name}) and the next run "
                    "applies it"
                ) from None
            time.sleep(0.1)


def _apply_requests(settings: Settings) -> Change:
    saved = state.load(settings.state_dir)
    current = saved.copy()
    requests = manual.queued(settings.state_dir)
    fresh = manual.apply(requests, current, settings.policy)

    change = update(
        settings,
        lambda table: manual.adjust(
            table, current, settings.now, settings.ttl, settings.policy, fresh
        ),
        publish_map=True,
    )
    audited(change, manual.audit_names(requests))

    if current != saved:
        state.save(settings.state_dir, current)
    manual.done(requests)
    return change


def expiries(settings: Settings) -> dict[str, float]:
    """When each current grant ends: its TIME plus the TTL, or a hand grant's end.

    Read only; a state that cannot be read only hides the hand grants' ends.
    """
    table = grants.prune(grants.load(settings.map_path), settings.ttl, settings.now)
    ends = {key: float(when + settings.ttl) for key, when in table.items()}
    try:
        saved = state.load(settings.state_dir, repair=False)
    except StateError as error:
        log.warning("%s", error)
        return ends
    for key, until in saved.manual.items():
        if key in ends and until > ends[key]:
            ends[key] = until
    return ends


def publish_now(settings: Settings) -> None:
    """Rebuild the map from the grant file, pruned (an empty one if absent)."""
    change = locked_update(
        settings, lambda current: current, publish_map=True, force=True
    )
    audited(change, {})


def parse_entries(lines: Iterable[str], origin: str, now: float) -> list[Entry]:
    """`IP [TIME ...]` lines or scan's JSON lines; raise InputError on a bad one."""
    entries: list[Entry] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        raw_ip, raw_time, raw_since = _fields(text)
        key = normalise(raw_ip) if raw_ip else None
        when = _number(raw_time, now)
        since = None if raw_since is None else _number(raw_since, now)
        if key is None or when is None or (raw_since is not None and since is None):
            raise InputError(
                f"{origin}, line {number}: expected 'IP [TIME]' or scan's JSON, "
                f"found {text[:60]!r}; nothing was merged"
            )
        entries.append(Entry(key, when, since))
    return entries


def _fields(text: str) -> tuple[str | None, object, object]:
    if text.startswith("{"):
        try:
            record = json.loads(text)
        except ValueError:
            return None, None, None
        if not isinstance(record, dict) or not isinstance(record.get("ip"), str):
            return None, None, None
        return record["ip"], record.get("time"), record.get("since")
    fields = text.split()
    return fields[0], fields[1] if len(fields) > 1 else None, None


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
