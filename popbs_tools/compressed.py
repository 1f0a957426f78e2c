"""Rotated logs that were compressed: opened by their magic bytes, not names.

logrotate compresses with gzip by default and may be told to use bzip2, xz or
zstd; FreeBSD's newsyslog writes .bz2. The name can lie (a .gz that is not),
the first bytes cannot.
"""

import errno
import importlib
import io
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

if TYPE_CHECKING:
    from subprocess import Popen

# How much a forward seek reads at a time.
CHUNK = 1 << 20

# The decompressors are imported when a file needs one: a cron run that reads
# only the live log should not pay for them.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "lzma"),
)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def read_errors() -> tuple[type[BaseException], ...]:
    """What reading a log may raise, for an `except` clause.

    A corrupt .xz raises LZMAError; it can only do so once lzma is imported.
    """
    lzma = sys.modules.get("lzma")
    return (OSError, EOFError, lzma.LZMAError) if lzma else (OSError, EOFError)


def open_any(path: Path) -> tuple[BinaryIO, bool]:
    """Open a log, through its decompressor if its magic bytes say so.

    Returns the stream and whether it was compressed (a compressed generation
    is final: it will not grow).
    """
    handle = open(path, "rb")  # noqa: SIM115 - returned to the caller
    magic = handle.read(6)
    for prefix, module in _MAGIC:
        if magic.startswith(prefix):
            handle.close()
            opener = importlib.import_module(module).open
            return cast(BinaryIO, opener(path, "rb")), True
    if magic.startswith(_ZSTD_MAGIC):
        handle.close()
        return cast(BinaryIO, ZstdReader(path)), True
    handle.seek(0)
    return handle, False


class ZstdReader(io.RawIOBase):
    """A zstd-compressed file through the zstd command (the stdlib has no zstd
    before Python 3.14), seekable the way gzip's reader is: forward by
    reading, backward by starting again."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        import shutil

        zstd = shutil.which("zstd", path=os.environ.get("PATH", "") + ":/usr/bin")
        if zstd is None:
            raise OSError(
                errno.ENOENT, f"{path} is zstd-compressed and zstd is missing"
            )
        self._command = [zstd, "-dcq", "--", str(path)]
        self._process: Popen[bytes] | None = None
        self._position = 0

    def _start(self) -> None:
        import subprocess

        self._stop()
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self._position = 0

    def _stop(self) -> None:
        if self._process is not None:
            assert self._process.stdout is not None
            self._process.stdout.close()
            self._process.kill()
            self._process.wait()
            self._process = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        if self._process is None:
            self._start()
        assert self._process is not None and self._process.stdout is not None
        data = self._process.stdout.read(size)
        self._position += len(data)
        if not data and size != 0 and self._process.wait() != 0:
            # A truncated or damaged file (or one still being written by
            # `zstd --rm`) must not read as a complete generation.
            raise EOFError("zstd could not decompress it to its end")
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise OSError(errno.EINVAL, "zstd streams seek from the start only")
        if self._process is None or offset < self._position:
            self._start()
        while self._position < offset:
            if not self.read(min(CHUNK, offset - self._position)):
                break
        return self._position

    def close(self) -> None:
        self._stop()
        super().close()
