"""Read a log from its saved position to its last complete line, in bytes.

Only the lines that hold one of the recognisers' markers are handed on: big
chunks are searched with bytes.find, which is much cheaper than splitting every
line in Python. A generation of the log is recognised by content (see
state.Position), so rename, copytruncate and inode reuse are told apart
without trusting inode numbers.
"""

import errno
import hashlib
import logging
import os
import signal
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from popbs_tools import progress
from popbs_tools.compressed import open_any, read_errors
from popbs_tools.errors import InputError
from popbs_tools.state import START, Position

log = logging.getLogger(__name__)

HEAD = 1024
TAIL = 256
CHUNK = 1 << 20
# A line longer than this cannot be a login: it is skipped, in bounded memory.
MAX_LINE = 64 * 1024


@dataclass(frozen=True)
class Source:
    """Where candidate lines come from: a generation, and its modification time."""

    name: str
    mtime: float | None
    # The configured log this generation belongs to: lines of one process
    # pair across a rotation.
    log: str = ""


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def open_log(path: Path) -> BinaryIO:
    """Open a configured log, which must be a regular file.

    O_NONBLOCK keeps a FIFO from hanging the run (and the lock) until a writer
    comes; /dev/zero would never end. Neither has offsets to resume from.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return os.fdopen(fd, "rb")


def candidate_lines(data: bytes, markers: tuple[bytes, ...]) -> list[bytes]:
    """The lines of `data` (complete lines only) that hold a marker, in order."""
    starts: dict[int, int] = {}
    for marker in markers:
        found = data.find(marker)
        while found != -1:
            start = data.rfind(b"\n", 0, found) + 1
            end = data.find(b"\n", found)
            if end == -1:
                end = len(data)
            starts[start] = end
            found = data.find(marker, end)
    return [data[start : starts[start]].lstrip(b"\0") for start in sorted(starts)]


def read_from(
    handle: BinaryIO,
    start: int,
    markers: tuple[bytes, ...],
    final: bool,
    stop: int | None = None,
) -> Iterator[bytes | int]:
    """Yield candidate lines from `start`, and offsets; the last is the end.

    Each offset is just after the last complete line handed on so far, so
    each is a place reading may resume from. A final generation's last line
    counts even without a newline. With `stop`, reading ends there.
    """
    if handle.seekable():
        handle.seek(start)
    else:
        _skip(handle, start)
    # `consumed` is the offset just after the last whole line handed on, and
    # the only offset ever returned: a saved offset inside a line would make
    # the rest of that line (another program's text) look like a line of its
    # own on the next run.
    consumed = start
    pending = b""
    skipped_to: int | None = None  # while inside an overlong line: where
    first = start == 0
    position = start
    while True:
        size = CHUNK if stop is None else min(CHUNK, stop - position)
        chunk = handle.read(size) if size > 0 else b""
        if not chunk:
            break
        position += len(chunk)
        if first:
            # A writer that does not append (O_APPEND) keeps writing at its old
            # offset after a copytruncate: the hole reads as NUL bytes, as
            # long as the old log was, which run straight into the first real
            # line (log-faults case 28). They are no line: skip them all.
            stripped = chunk.lstrip(b"\0")
            consumed += len(chunk) - len(stripped)
            if not stripped:
                continue
            if consumed:
                log.warning("log starts with %d NUL bytes; skipped", consumed)
            chunk = stripped
        first = False
        if skipped_to is not None:
            newline = chunk.find(b"\n")
            if newline == -1:
                skipped_to += len(chunk)
                continue
            consumed = skipped_to + newline + 1
            chunk, skipped_to = chunk[newline + 1 :], None
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        yield from _short(candidate_lines(data[:cut], markers))
        consumed += cut
        pending = data[cut:]
        if len(pending) > MAX_LINE:
            log.warning(
                "skipping a line over %d bytes at offset %d", MAX_LINE, consumed
            )
            skipped_to, pending = consumed + len(pending), b""
        # Where the lines handed on so far end: a checkpoint may be saved there.
        yield consumed
    if final:
        # A finished generation will not grow: its last line counts as it is.
        if skipped_to is not None:
            consumed = skipped_to
        elif pending:
            yield from _short(candidate_lines(pending, markers))
            consumed += len(pending)
    yield consumed


def _short(lines: list[bytes]) -> list[bytes]:
    # No login line is that long; one that is must count the same whether or
    # not it crosses a read boundary (where it is skipped unread).
    return [line for line in lines if len(line) <= MAX_LINE]


def read_big(
    handle: BinaryIO, start: int, size: int, markers: tuple[bytes, ...]
) -> Iterator[bytes | int]:
    """read_from(handle, start, markers, final=False), in two processes.

    A first run on a big log, or a catch-up after downtime, spends its time
    in two ways about equally: searching for markers and interpreting the
    candidate lines, which only this process can do (sessions and years carry
    from line to line). So a child process does the searching and sends the
    candidates down a pipe while this one interprets them: the run takes the
    longer of the two rather than their sum. The pipe bounds the memory both
    ways: a child ahead of its reader waits.
    """
    if size - start < PARALLEL_MIN:
        yield from read_from(handle, start, markers, final=False)
        return

    reading, writing = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            os.close(reading)
            _die_with(parent)
            _send_candidates(handle, start, markers, writing)
            code = 0
        finally:
            os._exit(code)

    os.close(writing)
    try:
        end = start
        for item in _received(reading):
            if isinstance(item, int):
                end = item
            yield item
        os.waitpid(child, 0)
        child = 0
        # Whatever the child did not send (it failed, or the log grew since
        # it reached the end) is read here; usually nothing.
        yield from read_from(handle, end, markers, final=False)
    finally:
        if child:
            os.kill(child, 9)
            os.waitpid(child, 0)
        os.close(reading)


def _die_with(parent: int) -> None:
    """Have the kernel kill this child when its parent dies.

    A killed sync must not leave a child behind that holds the lock (it
    shares the parent's lock file) and keeps cron's next runs out.
    """
    import ctypes  # only in the child: ctypes is slow to import

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # died before the line above
        os._exit(1)


# Below this much to read, one process is as quick.
PARALLEL_MIN = 64 << 20


def _send_candidates(
    handle: BinaryIO, start: int, markers: tuple[bytes, ...], pipe: int
) -> None:
    """Send each read's lines in one record: "C", the offset after them, their
    count and size, then the lines joined by newlines (none holds one)."""
    # Our own open file description: the parent's shares its offset.
    with (
        open(f"/proc/self/fd/{handle.fileno()}", "rb") as own,
        open(pipe, "wb", buffering=CHUNK) as out,
    ):
        lines: list[bytes] = []
        for item in read_from(own, start, markers, final=False):
            if not isinstance(item, int):
                lines.append(item)
                continue
            joined = b"\n".join(lines)
            header = item.to_bytes(8, "big") + len(lines).to_bytes(4, "big")
            out.write(b"C" + header + len(joined).to_bytes(4, "big") + joined)
            lines = []


def _received(pipe: int) -> Iterator[bytes | int]:
    """The child's lines and offsets, each batch whole or not at all: a child
    that dies mid-way leaves no line that the serial reader, taking over from
    the last offset, would hand on again."""
    with open(pipe, "rb", buffering=CHUNK, closefd=False) as records:
        while len(header := records.read(17)) == 17:
            count = int.from_bytes(header[9:13], "big")
            size = int.from_bytes(header[13:17], "big")
            joined = records.read(size)
            lines = joined.split(b"\n") if count else []
            if header[:1] != b"C" or len(joined) != size or len(lines) != count:
                return
            yield from lines
            yield int.from_bytes(header[1:9], "big")


def _skip(handle: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = handle.read(min(count, CHUNK))
        if not chunk:
            break
        count -= len(chunk)


def _read_at(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    return handle.read(size)


def position_of(handle: BinaryIO, offset: int, stat: os.stat_result) -> Position:
    tail_len = min(TAIL, offset)
    head = _read_at(handle, 0, HEAD)
    return _position(offset, head, _read_at(handle, offset - tail_len, tail_len), stat)


def position_in_file(fd: int, offset: int, stat: os.stat_result) -> Position:
    """position_of() for a plain file, by pread: the file offset stays put."""
    tail_len = min(TAIL, offset)
    head = os.pread(fd, HEAD, 0)
    return _position(offset, head, os.pread(fd, tail_len, offset - tail_len), stat)


def _position(offset: int, head: bytes, tail: bytes, stat: os.stat_result) -> Position:
    return Position(
        offset,
        _digest(head),
        len(head),
        _digest(tail),
        len(tail),
        stat.st_dev,
        stat.st_ino,
    )


@dataclass(frozen=True)
class Checkpoint:
    """A place in a configured log up to which every line has been handed on."""

    log: str
    position: Position
    # Where the last rotated generation ended (see LogScan.finished).
    finished: Position | None = None


# Progress is offered for saving after each this much of a log is read.
CHECKPOINT = 256 << 20


def holds(handle: BinaryIO, saved: Position) -> bool:
    """Whether this stream is the generation `saved` was taken from."""
    head = _read_at(handle, 0, saved.head_len)
    if len(head) != saved.head_len or _digest(head) != saved.head:
        return False
    # Compressed streams seek by decompressing forward: slow, but only done
    # when the live log no longer holds the saved generation.
    tail = _read_at(handle, saved.offset - saved.tail_len, saved.tail_len)
    return len(tail) == saved.tail_len and _digest(tail) == saved.tail


_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def _newness(path: Path, log: Path) -> tuple[int, float, bool]:
    """Sort key of a rotated generation: greater is newer.

    logrotate and savelog number generations (X.0, X.1 newest, X.2 older),
    logrotate's dateext dates them (X-YYYYMMDD); anything else goes by mtime.
    Of X.1 and X.1.zst side by side (a compressor still at work), the plain
    file comes first: it is complete, the compressed one may not be yet.
    """
    suffix = path.name[len(log.name) :]
    plain = True
    for ending in _COMPRESSED:
        if suffix.endswith(ending):
            suffix, plain = suffix.removesuffix(ending), False
    if suffix[:1] == "." and suffix[1:].isdigit():
        return 0, -int(suffix[1:]), plain
    if suffix[:1] == "-" and suffix[1:].isdigit():
        return 1, int(suffix[1:]), plain
    try:
        return 2, path.stat().st_mtime, plain
    except OSError:
        return 2, 0.0, plain


def rotated_siblings(path: Path, globs: tuple[str, ...] = ()) -> list[Path]:
    """Files that may be earlier generations of `path`, newest first.

    logrotate and savelog write X.1, X.0, X-YYYYMMDD, each maybe compressed,
    beside X or, with logrotate's olddir, in a directory the `globs` name.
    """
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        entries = []
    if globs:
        import glob

        entries += [Path(name) for pattern in globs for name in glob.glob(pattern)]
    names = (path.name + ".", path.name + "-")
    found = {
        str(entry): entry
        for entry in entries
        if entry.name.startswith(names) and entry.is_file() and not entry.is_symlink()
    }
    return sorted(found.values(), key=lambda e: _newness(e, path), reverse=True)


@dataclass
class LogScan:
    """One configured log, read from its saved position.

    Iterate `lines()` for (source, candidate line); afterwards `position` is
    what to save (None when nothing should change), and `finished` where the
    last rotated generation ended, so that lines the writer still appends to
    it after the rotation are read too (None to forget it).
    """

    path: Path
    saved: Position | None
    markers: tuple[bytes, ...]
    finished_before: Position | None = None
    # Offer a Checkpoint after each this many bytes of the current file.
    checkpoint_every: int = 0
    # Where else rotated generations may be (settings.rotated).
    rotated_globs: tuple[str, ...] = ()
    position: Position | None = None
    finished: Position | None = None
    missing: bool = False
    # Whether reading moved on to a new generation of the log this time.
    rotated: bool = False

    def __post_init__(self) -> None:
        self.finished = self.finished_before

    def lines(self) -> Iterator[tuple[Source, bytes | Checkpoint]]:
        yield from self._late_lines()
        try:
            handle = open_log(self.path)
        except FileNotFoundError:
            yield from self._missing()
            return
        except OSError as error:
            raise InputError(f"cannot read log {self.path}: {error.strerror}") from None

        with handle:
            stat = os.fstat(handle.fileno())
            start = 0
            if self.saved is not None:
                if self._emptied_and_rotated(stat):
                    yield from self._read_by_inode()
                    self.rotated = True
                elif holds(handle, self.saved):
                    start = self.saved.offset
                    if start == stat.st_size:
                        return
                else:
                    yield from self._finish_previous()
            source = Source(str(self.path), stat.st_mtime)
            end = last = start
            with progress.reading(str(self.path), start, stat.st_size) as advance:
                for item in read_big(handle, start, stat.st_size, self.markers):
                    if not isinstance(item, int):
                        yield source, item
                        continue
                    end = item
                    advance(end)
                    # A read ends short of a whole chunk at the last line end.
                    due = end - last + MAX_LINE >= self.checkpoint_every
                    if self.checkpoint_every and due:
                        last = end
                        here = position_in_file(handle.fileno(), end, stat)
                        yield source, Checkpoint(str(self.path), here, self.finished)
            if self.saved is None or end != start or start != self.saved.offset:
                self.position = position_of(handle, end, stat)

    def _emptied_and_rotated(self, stat: os.stat_result) -> bool:
        # Nothing was read from the saved generation (it was empty): its
        # content cannot tell it apart, so its inode is the only hint left.
        saved = self.saved
        assert saved is not None
        return (
            saved.head_len == 0
            and saved.ino != 0
            and ((saved.dev, saved.ino) != (stat.st_dev, stat.st_ino))
        )

    def _read_by_inode(self) -> Iterator[tuple[Source, bytes | Checkpoint]]:
        assert self.saved is not None
        for sibling in rotated_siblings(self.path, self.rotated_globs):
            try:
                same = (sibling.stat().st_dev, sibling.stat().st_ino) == (
                    self.saved.dev,
                    self.saved.ino,
                )
            except OSError:
                continue
            if same:
                yield from self._read_generation(sibling, 0)
                return

    def _missing(self) -> Iterator[tuple[Source, bytes | Checkpoint]]:
        # Mid-rotation the path can be missing for a moment: keep the position,
        # but finish the old generation if it already sits under a new name.
        self.missing = True
        if self.saved is None or self.saved == START:
            log.info("log %s is missing; nothing to read", self.path)
            return
        log.info("log %s is missing", self.path)
        yield from self._finish_previous()

    def _finish_previous(self) -> Iterator[tuple[Source, bytes | Checkpoint]]:
        """Finish the saved generation, then read every newer rotated one."""
        assert self.saved is not None
        siblings = rotated_siblings(self.path, self.rotated_globs)
        for index, sibling in enumerate(siblings):
            if not self._holds(sibling, self.saved):
                continue
            log.info("finishing %s from offset %d", sibling, self.saved.offset)
            yield from self._read_generation(sibling, self.saved.offset)
            # Rotated twice or more since the last run (downtime): the ones
            # in between are read whole, oldest first.
            for newer in reversed(siblings[:index]):
                log.info("reading %s, rotated since the last run", newer)
                yield from self._read_generation(newer, 0)
            self.position = START
            self.rotated = True
            return
        if self.path.exists():
            self.rotated = True
            log.warning(
                "%s was truncated or replaced and no rotated copy holds the rest; "
                "reading it from the start",
                self.path,
            )

    def _late_lines(self) -> Iterator[tuple[Source, bytes | Checkpoint]]:
        # A writer that has not reopened its log yet still appends to the
        # renamed file: read what came after where the last run finished it.
        before = self.finished_before
        if before is None:
            return
        for sibling in rotated_siblings(self.path, self.rotated_globs)[:2]:
            if self._holds(sibling, before):
                if sibling.stat().st_size > before.offset:
                    # No checkpoints: saved, one would send the next run back
                    # to this generation and through the newer ones again.
                    yield from self._read_generation(sibling, before.offset, False)
                return
        self.finished = None  # compressed or gone: nothing more will come

    @staticmethod
    def _holds(path: Path, position: Position) -> bool:
        try:
            handle, _ = open_any(path)
        except OSError:
            return False
        with handle:
            try:
                return holds(handle, position)
            except read_errors():
                return False

    def _read_generation(
        self, path: Path, start: int, checkpoints: bool = True
    ) -> Iterator[tuple[Source, bytes | Checkpoint]]:
        """Read a rotated generation from `start`; remember where it ended.

        A long catch-up (after downtime, a rotated log of gigabytes) offers
        checkpoints in plain generations too: saved, such a position is found
        again among the rotated files by its content, and reading goes on
        from there. Compressed ones offer none: finding a place in one means
        decompressing up to it.
        """
        try:
            handle, compressed = open_any(path)
            stat = os.stat(path)
        except OSError as error:
            log.warning("cannot read %s: %s", path, error.strerror)
            return
        source = Source(str(path), stat.st_mtime, str(self.path))
        offer = checkpoints and self.checkpoint_every > 0 and not compressed
        with handle:
            end = last = start
            for item in read_from(handle, start, self.markers, compressed):
                if not isinstance(item, int):
                    yield source, item
                    continue
                end = item
                if offer and end - last + MAX_LINE >= self.checkpoint_every:
                    last = end
                    here = position_in_file(handle.fileno(), end, stat)
                    yield source, Checkpoint(str(self.path), here, None)
            self.finished = None if compressed else position_of(handle, end, stat)
