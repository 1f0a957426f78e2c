"""From log lines to logins: parse, recognise, resolve the time, apply the policy."""

import logging
import lzma
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from popbs_tools import logline, scanner
from popbs_tools.addresses import Policy
from popbs_tools.correlate import Sessions
from popbs_tools.errors import InputError
from popbs_tools.recognise import Recogniser
from popbs_tools.scanner import Source
from popbs_tools.state import Positions
from popbs_tools.timestamps import YearGuesser

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

    def as_text(self) -> str:
        # One record a line, four fields: white space in a user name would
        # shift the columns, so it is written as \xNN.
        user = "".join(
            char
            if char.isprintable() and not char.isspace() and char != "\\"
            else f"\\x{ord(char):02x}"
            for char in self.user
        )
        return f"{self.ip} {self.time} {user or '-'} {self.server}"


@dataclass
class Interpreter:
    recogniser: Recogniser
    policy: Policy
    now: float

    def logins(self, lines: Iterable[tuple[Source, bytes]]) -> Iterator[Found]:
        guessers: dict[str, YearGuesser] = {}
        # One table a scan: see correlate.py.
        sessions = Sessions()
        for source, raw in lines:
            guesser = guessers.get(source.name)
            if guesser is None:
                reference = min(source.mtime or self.now, self.now)
                guesser = guessers[source.name] = YearGuesser(reference)
            found = self._one(source, raw, guesser, sessions)
            if found is not None:
                yield found

    def _one(
        self, source: Source, raw: bytes, guesser: YearGuesser, sessions: Sessions
    ) -> Found | None:
        record = logline.parse(raw.decode("utf-8", "replace"))
        if record is None:
            return None
        verdict = self.recogniser.judge(record)
        login, step = verdict.login, verdict.step
        when: float | None = None
        if step is not None:
            when = guesser.resolve(record.stamp)
            key = (source.name, record.host, step.family, step.pid)
            login = sessions.apply(key, step, when)
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
        return Found(
            login.ip, int(when), login.user, login.server, login.protocol, source.name
        )


def scan_configured(
    interpreter: Interpreter,
    logs: Iterable[Path],
    saved: Positions,
    from_start: bool,
) -> tuple[Iterator[Found], Positions]:
    """Logins in the configured logs since their saved positions.

    Returns the logins (lazily) and the positions dict, which is filled in as
    the iterator is consumed: save it only after the iterator is exhausted.
    """
    positions = dict(saved)
    markers = interpreter.recogniser.markers

    def lines() -> Iterator[tuple[Source, bytes]]:
        for path in logs:
            key = str(path)
            reader = scanner.LogScan(
                path, None if from_start else saved.get(key), markers
            )
            yield from reader.lines()
            if reader.position is not None:
                positions[key] = reader.position

    return interpreter.logins(lines()), positions


def scan_files(interpreter: Interpreter, names: Iterable[str]) -> Iterator[Found]:
    """Logins in whole files given by name (`-` is stdin), read to their end."""
    markers = interpreter.recogniser.markers

    def lines() -> Iterator[tuple[Source, bytes]]:
        for name in names:
            if name == "-":
                source = Source("-", None)
                for item in scanner.read_from(sys.stdin.buffer, 0, markers, final=True):
                    if not isinstance(item, int):
                        yield source, item
                continue
            try:
                handle, _ = scanner.open_any(Path(name))
                mtime = Path(name).stat().st_mtime
            except OSError as error:
                raise InputError(f"cannot read {name}: {error.strerror}") from None
            source = Source(name, mtime)
            with handle, _reading(name):
                for item in scanner.read_from(handle, 0, markers, final=True):
                    if not isinstance(item, int):
                        yield source, item

    return interpreter.logins(lines())


@contextmanager
def _reading(name: str) -> Iterator[None]:
    """Turn a read error, or a corrupt compressed file, into an InputError."""
    try:
        yield
    except (OSError, EOFError, lzma.LZMAError) as error:
        detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise InputError(f"cannot read {name}: {detail}") from None
