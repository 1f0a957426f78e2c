"""Regexes compiled on first use.

Compiling the ~70 patterns of the rule table and the log-line parser costs
more than the rest of a cron run that finds no new line (issue 5): a run
only compiles the patterns that a line it actually parses needs.
"""

import re
from collections.abc import Iterator


class LazyPattern:
    """The subset of re.Pattern that popbs uses, compiled on the first call."""

    def __init__(
        self, source: str, flags: int = 0, compiled: re.Pattern[str] | None = None
    ) -> None:
        self.source = source
        self.flags = flags
        self._compiled: re.Pattern[str] | None = None
        if compiled is not None:
            self._bind(compiled)

    @property
    def compiled(self) -> re.Pattern[str]:
        if self._compiled is None:
            self._bind(re.compile(self.source, self.flags))
        assert self._compiled is not None
        return self._compiled

    def _bind(self, compiled: re.Pattern[str]) -> None:
        self._compiled = compiled
        # From now on the compiled pattern's own methods answer, without this
        # wrapper's call in between: scans call them for every line.
        self.__dict__.update(
            fullmatch=compiled.fullmatch,
            match=compiled.match,
            search=compiled.search,
            finditer=compiled.finditer,
        )

    @property
    def groupindex(self) -> dict[str, int]:
        return dict(self.compiled.groupindex)

    def fullmatch(self, text: str) -> re.Match[str] | None:
        return self.compiled.fullmatch(text)

    def match(self, text: str) -> re.Match[str] | None:
        return self.compiled.match(text)

    def search(self, text: str) -> re.Match[str] | None:
        return self.compiled.search(text)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return self.compiled.finditer(text)

    # Equal as re.Pattern objects are: by source and flags.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LazyPattern):
            return NotImplemented
        return (self.source, self.flags) == (other.source, other.flags)

    def __hash__(self) -> int:
        return hash((self.source, self.flags))

    def __repr__(self) -> str:
        return f"LazyPattern({self.source!r}, {self.flags!r})"
