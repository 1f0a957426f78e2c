"""From log lines to logins: parse, recognise, resolve the time, apply the policy."""

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from popbs_tools import logline, progress, scanner
from popbs_tools.addresses import Policy
from popbs_tools.audit import field
from popbs_tools.compressed import open_any, read_errors
from popbs_tools.correlate import Sessions
from popbs_tools.errors import InputError
from popbs_tools.logline import Record
from popbs_tools.recognise import Recogniser, Role, Step
from popbs_tools.scanner import Checkpoint, Source
from popbs_tools.state import State
from popbs_tools.timestamps import YearGuesser
from popbs_tools.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """A successful login, as `popbs scan` reports it."""

    ip: str
    time: int
    user: str
    server: str
    protocol: str
    log: str
    # For the end of an IMAP session: when its login was (time is the end).
    since: int | None = None

    def as_text(self) -> str:
        # One record a line, four fields: white space in a user name would
        # shift the columns, so it is escaped as in the audit trail.
        user = field(self.user)
        return f"{self.ip} {self.time} {user} {self.server}"


Item = tuple[Source, bytes | Record | Checkpoint]


@dataclass
class Interpreter:
    recogniser: Recogniser
    policy: Policy
    now: float
    # Open IMAP sessions, kept across runs in the state; None where there is
    # no state (files named on the command line).
    tracker: Tracker | None = None
    # Addresses waiting for their login line (correlate.py), also kept.
    pairs: Sessions | None = None

    def logins(self, items: Iterable[Item]) -> Iterator[Found | Checkpoint]:
        """The logins in `items`, and the checkpoints among them, in order."""
        guessers: dict[str, YearGuesser] = {}
        pairs = self.pairs if self.pairs is not None else Sessions()
        for source, item in items:
            guesser = guessers.get(source.name)
            if guesser is None:
                reference = min(source.mtime or self.now, self.now)
                guesser = guessers[source.name] = YearGuesser(reference)
            if isinstance(item, Checkpoint):
                yield item
                continue
            if isinstance(item, bytes):
                record = logline.parse(item.decode("utf-8", "replace"))
                if record is None:
                    continue
            else:
                record = item
            found = self._one(source, record, guesser, pairs)
            if found is not None:
                yield found

    def _one(
        self, source: Source, record: Record, guesser: YearGuesser, pairs: Sessions
    ) -> Found | None:
        verdict = self.recogniser.judge(record)
        login, step = verdict.login, verdict.step
        when: float | None = None
        if step is not None and step.role is Role.LOGOUT:
            return self._ended(source, record, guesser, step)
        if step is not None:
            when = guesser.resolve(record.stamp)
            key = (source.log or source.name, record.host, step.family, step.pid)
            login = pairs.apply(key, step, when)
        if login is None:
            return None
        refusal = self.policy.refusal(login.ip)
        if refusal:
            log.info("not granting %s (%s) from %s", login.ip, refusal, source.name)
            return None
        if step is None:
            when = guesser.resolve(record.stamp)
        if when is None:
            log.info("login of %s has no usable timestamp; skipped", login.ip)
            return None
        if self.tracker is not None:
            rule = self.recogniser.rule_named(login.rule)
            pid = record.pid if rule is not None and rule.line_pid else ""
            self.tracker.opened(record, login, pid, when)
        return Found(
            login.ip, int(when), login.user, login.server, login.protocol, source.name
        )

    def _ended(
        self, source: Source, record: Record, guesser: YearGuesser, step: Step
    ) -> Found | None:
        """An end-of-session line: the client was logged in until then."""
        if self.tracker is None or step.login is None:
            return None
        session = self.tracker.ended(record, step.login, step.pid)
        when = guesser.resolve(record.stamp)
        if session is None or when is None or self.policy.refusal(session.ip):
            return None
        return Found(
            session.ip,
            int(when),
            session.user,
            session.server,
            "imap",
            source.name,
            int(session.since),
        )


@dataclass(frozen=True)
class JournalSource:
    """The journal to read: the system's, or the given files."""

    files: tuple[Path, ...]
    since: float  # where a first run starts

    @property
    def name(self) -> str:
        return "journal:" + ",".join(str(path) for path in self.files)


def scan_configured(
    interpreter: Interpreter,
    logs: Iterable[Path],
    journal_source: JournalSource | None,
    saved: State,
    from_start: bool,
    checkpoint_every: int = 0,
    rotated: tuple[str, ...] = (),
) -> tuple[Iterator[Found | Checkpoint], State]:
    """Logins in the configured logs and journal since their saved positions.

    Returns the logins (lazily) and the new state, which is filled in as the
    iterator is consumed: save it only after the iterator is exhausted.
    """
    current = saved.copy()
    interpreter.tracker = Tracker(current.sessions, set(current.learned))
    interpreter.pairs = Sessions(saved=current.pending)
    markers = interpreter.recogniser.markers

    def items() -> Iterator[Item]:
        for path in logs:
            key = str(path)
            previous = None if from_start else saved.logs.get(key)
            finished = None if from_start else saved.finished.get(key)
            reader = scanner.LogScan(
                path, previous, markers, finished, checkpoint_every, rotated
            )
            with _reading(key):
                yield from reader.lines()
            if reader.position is not None:
                current.logs[key] = reader.position
            if reader.finished is None:
                current.finished.pop(key, None)
            else:
                current.finished[key] = reader.finished
            _note_missing(key, reader.missing, current, interpreter.now)
            if reader.rotated:
                current.rotated[key] = interpreter.now
        if journal_source is not None:
            yield from _journal_items(journal_source, saved, current, from_start)
        assert interpreter.tracker is not None and interpreter.pairs is not None
        current.learned = sorted(interpreter.tracker.learned)
        current.pending = interpreter.pairs.saved(interpreter.now)

    return interpreter.logins(items()), current


# A log is missing for a moment during a rotation: say so only if it stays so.
MISSING_WARN = 600.0


def _note_missing(key: str, missing: bool, current: State, now: float) -> None:
    if not missing:
        current.missing.pop(key, None)
        return
    since = current.missing.setdefault(key, now)
    if now - since >= MISSING_WARN:
        log.warning("log %s has been missing for %d minutes", key, (now - since) // 60)


def _journal_items(
    journal_source: JournalSource, saved: State, current: State, from_start: bool
) -> Iterator[Item]:
    from popbs_tools import journal  # only with --journal

    name = journal_source.name
    cursor = None if from_start else saved.cursors.get(name)
    source = Source(name, None)
    for entry in journal.read(journal_source.files, cursor, journal_source.since):
        if entry.record is not None:
            yield source, entry.record
        else:
            log.debug("journal entry ignored: %s", entry.refusal)
        current.cursors[name] = entry.cursor


def scan_files(interpreter: Interpreter, names: Iterable[str]) -> Iterator[Found]:
    """Logins in whole files given by name (`-` is stdin), read to their end."""
    markers = interpreter.recogniser.markers

    def lines() -> Iterator[Item]:
        for name in names:
            if name == "-":
                source = Source("-", None)
                for item in scanner.read_from(sys.stdin.buffer, 0, markers, final=True):
                    if not isinstance(item, int):
                        yield source, item
                continue
            try:
                handle, compressed = open_any(Path(name))
                info = Path(name).stat()
            except OSError as error:
                raise InputError(f"cannot read {name}: {error.strerror}") from None
            source = Source(name, info.st_mtime)
            # Offsets in a compressed file count its decompressed bytes: no
            # total to show them against.
            total = 0 if compressed else info.st_size
            with handle, _reading(name), progress.reading(name, 0, total) as advance:
                for item in scanner.read_from(handle, 0, markers, final=True):
                    if not isinstance(item, int):
                        yield source, item
                    elif total:
                        advance(item)

    return (item for item in interpreter.logins(lines()) if isinstance(item, Found))


@contextmanager
def _reading(name: str) -> Iterator[None]:
    """Turn a read error, or a corrupt compressed file, into an InputError."""
    try:
        yield
    except read_errors() as error:
        detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise InputError(f"cannot read {name}: {detail}") from None
