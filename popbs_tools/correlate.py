"""Pair a login line with the client address an earlier line of its process gave.

Some servers log the address when a connection arrives and the login later
without it: tcpserver's "pid N from IP" then qmail-popup's "pid N Accept",
popa3d's "Session from IP" then "Authentication passed for USER". The pairing
key is (log, host, family, pid): lines of other logs, machines or servers never
pair. The table is bounded, and an address pairs at most once and only with a
login within the rule's window after it, so a reused pid or a lost end-of-session
line cannot lend an old address to a new login. The table is kept in the state
between runs: a cron run often falls between the two lines.
"""

from collections import OrderedDict
from dataclasses import dataclass, replace

from popbs_tools.recognise import Login, Role, Step

# Processes whose address is kept; the oldest is dropped beyond this.
MAX_ENTRIES = 10_000

# No rule's window is longer: older addresses are not kept between runs.
MAX_WINDOW = 2 * 3600.0

# Stamps of one process's lines may tie or, with coarse or skewed writers, run
# a little backwards.
BACKWARD_SLACK = 5.0

Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class _Address:
    ip: str
    when: float


class Sessions:
    """The addresses of processes whose login has not been seen yet."""

    def __init__(
        self, limit: int = MAX_ENTRIES, saved: dict[str, list[object]] | None = None
    ) -> None:
        self.limit = limit
        self._addresses: OrderedDict[Key, _Address] = OrderedDict()
        for text, (ip, when) in (saved or {}).items():
            parts = text.split("|")
            if (
                len(parts) == 4
                and isinstance(ip, str)
                and isinstance(when, float | int)
            ):
                self._addresses[(parts[0], parts[1], parts[2], parts[3])] = _Address(
                    ip, float(when)
                )

    def saved(self, now: float) -> dict[str, list[object]]:
        """The addresses still waiting for their login, for the state."""
        return {
            "|".join(key): [address.ip, address.when]
            for key, address in self._addresses.items()
            if now - address.when <= MAX_WINDOW
        }

    def __len__(self) -> int:
        return len(self._addresses)

    def apply(self, key: Key, step: Step, when: float | None) -> Login | None:
        """Take in one step; return the login it completes, if any."""
        if step.role not in (Role.ADDRESS, Role.SESSION_LOGIN, Role.FORGET):
            return None  # a LOGOUT is the session tracker's, not this table's
        known = self._addresses.pop(key, None)
        if step.role is Role.ADDRESS:
            if when is not None:
                self._addresses[key] = _Address(step.ip, when)
                while len(self._addresses) > self.limit:
                    self._addresses.popitem(last=False)
            return None
        if step.role is not Role.SESSION_LOGIN or step.login is None:
            return None
        if known is None or when is None:
            return None
        if not -BACKWARD_SLACK <= when - known.when <= step.window:
            return None
        return replace(step.login, ip=known.ip)
