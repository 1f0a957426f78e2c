"""Grants and revocations made by hand: `popbs grant` and `popbs revoke`.

A request is first written as a file of its own into STATE_DIR/requests, and
only then does its command wait for the lock. Whichever run holds the lock
next applies every queued request: the command itself, or a sync that was
running (or watching) meanwhile. So a request made during a sync is never
lost, and a killed run leaves it queued for the next.

What a request leaves in the state:
- a grant: `manual[IP] = UNTIL`; the grant file's TIME for the address is kept
  at `UNTIL - TTL` at the latest, so Postfix stops relaying at UNTIL, and a
  grant longer than the TTL is refreshed by each sync until then;
- a revocation: `revoked[IP] = WHEN`; logins logged at or before WHEN no
  longer count (a late read of the log must not bring the address back), and
  its open IMAP sessions are forgotten. Only a new login brings it back.
"""

import contextlib
import json
import logging
import math
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from popbs_tools import fsutil
from popbs_tools.addresses import Policy, normalise
from popbs_tools.errors import StateError
from popbs_tools.grants import Grants
from popbs_tools.state import State

log = logging.getLogger(__name__)

REQUESTS_DIR = "requests"
SUFFIX = ".request"
GRANT = "grant"
REVOKE = "revoke"


@dataclass(frozen=True)
class Request:
    action: str
    ip: str
    time: float
    until: float = 0.0
    # Who asked, for the audit trail (--syslog).
    by: str = ""
    path: Path | None = None


def submit(state_dir: Path, request: Request) -> Path:
    """Queue `request` in the state directory; return its file."""
    directory = state_dir / REQUESTS_DIR
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        record = {
            "action": request.action,
            "ip": request.ip,
            "time": request.time,
            "until": request.until,
            "by": request.by,
        }
        data = json.dumps(record).encode() + b"\n"
        temp = fsutil.write_temp(directory, ".new.", data, 0o600)
        # Named by the time it was made, so that requests apply in order.
        name = f"{time.time_ns():020d}-{os.getpid()}-{temp.name[-8:]}{SUFFIX}"
        path = directory / name
        os.replace(temp, path)
        fsutil.fsync_dir(directory)
    except OSError as error:
        raise StateError(
            f"cannot queue the request in {directory}: {error.strerror}"
        ) from None
    return path


def queued(state_dir: Path, set_aside: bool = True) -> list[Request]:
    """The requests waiting in the state directory, oldest first.

    A file that is not a request (written by hand, say) is set aside as
    NAME.bad with a warning rather than block the queue; only warned about
    without `set_aside`.
    """
    directory = state_dir / REQUESTS_DIR
    problem = fsutil.foreign(directory)
    if problem:
        raise StateError(f"refusing to read requests in {directory}: {problem}")
    try:
        names = sorted(name for name in os.listdir(directory) if name.endswith(SUFFIX))
    except FileNotFoundError:
        return []
    except OSError as error:
        raise StateError(f"cannot read {directory}: {error.strerror}") from None
    requests = []
    for name in names:
        path = directory / name
        try:
            requests.append(_read(path))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
            detail = getattr(error, "strerror", None) or error
            log.warning("ignoring request %s: %s", path, detail)
            if set_aside:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_name(name + ".bad"))
    return requests


# A request file is small; anything bigger is not one.
MAX_REQUEST = 4096
# No grant outlives this, whatever a request file says (see parse_duration).
LONGEST = 366 * 86400


def _read(path: Path) -> Request:
    """One request file, checked as strictly as the command that wrote it."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        # Only what popbs itself (root, or the user running it) wrote counts:
        # not a FIFO, not another user's file in a directory it can write.
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise ValueError(f"owned by uid {info.st_uid}, not by root")
        data = handle.read(MAX_REQUEST + 1)
    if len(data) > MAX_REQUEST:
        raise ValueError("too big")
    record = json.loads(data)
    action, raw_ip = record["action"], record["ip"]
    when, until = record["time"], record.get("until", 0.0)
    by = record.get("by", "")
    if action not in (GRANT, REVOKE) or not isinstance(raw_ip, str):
        raise ValueError("not a grant or revoke request")
    ip = normalise(raw_ip)
    if ip is None:
        raise ValueError(f"{raw_ip[:60]!r} is not an IP address")
    numbers = (when, until)
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        raise ValueError("a time is not a number")
    if not all(math.isfinite(n) and n >= 0 for n in numbers):
        raise ValueError("a time is not a finite positive number")
    if action == GRANT and not when < until <= when + LONGEST:
        raise ValueError("the grant's end is not within a year of its start")
    if not isinstance(by, str):
        raise ValueError("the requester is not text")
    return Request(action, ip, float(when), float(until), by[:64], path)


def requester() -> str:
    """The admin behind a request: the sudo user, else this process's user."""
    name = os.environ.get("SUDO_USER")
    if name:
        return name
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def audit_names(requests: Iterable[Request]) -> dict[str, tuple[str, str]]:
    """User and "server" of each hand grant, for the audit lines."""
    return {r.ip: (r.by or "-", "popbs-grant") for r in requests if r.action == GRANT}


def done(requests: Iterable[Request]) -> None:
    """Remove applied requests; only once their effect is saved and published."""
    for request in requests:
        if request.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(request.path)


def apply(requests: Iterable[Request], state: State, policy: Policy) -> set[str]:
    """Record the requests in `state` (grants, revocations, sessions).

    Returns the addresses whose earlier hand grant a new one replaces: their
    grant file time is set to end the grant as the new one asks (see adjust),
    sooner if need be. A grant from a login is never shortened so. A grant
    the policy refuses (the settings changed since it was queued) is dropped
    with a warning.
    """
    fresh: set[str] = set()
    for request in requests:
        if request.action == GRANT:
            refusal = policy.refusal(request.ip)
            if refusal:
                log.warning("not granting %s by hand: %s", request.ip, refusal)
                continue
            if request.ip in state.manual:
                fresh.add(request.ip)
            state.manual[request.ip] = request.until
            state.revoked.pop(request.ip, None)
            continue
        fresh.discard(request.ip)
        state.manual.pop(request.ip, None)
        state.revoked[request.ip] = max(
            request.time, state.revoked.get(request.ip, 0.0)
        )
        for key, session in list(state.sessions.items()):
            if session.ip == request.ip:
                del state.sessions[key]
    return fresh


def forget_revoked_sessions(state: State) -> None:
    """Forget the open IMAP sessions that began before their address was revoked.

    A login read only after the revocation opens its session again: it must
    not keep the address granted once the revocation itself has expired.
    """
    for key, session in list(state.sessions.items()):
        revoked = state.revoked.get(session.ip)
        if revoked is not None and session.since <= revoked:
            del state.sessions[key]


def not_revoked(
    logins: Iterable[tuple[str, float]],
    state: State,
    began: dict[str, float] | None = None,
) -> list[tuple[str, float]]:
    """The logins that came after their address was last revoked.

    A login counts by when it began: the end of an IMAP session that began
    before the revocation does not count, though it is logged after it
    (`began` gives, per address, the newest login's start, where it differs).
    A later login lifts the revocation.
    """
    kept = []
    for key, when in logins:
        revoked = state.revoked.get(key)
        if revoked is not None:
            start = began.get(key, when) if began else when
            if start <= revoked:
                continue
            del state.revoked[key]
        kept.append((key, when))
    return kept


def adjust(
    table: Grants,
    state: State,
    now: float,
    ttl: int,
    policy: Policy,
    fresh: set[str] | frozenset[str] = frozenset(),
) -> Grants:
    """Apply revocations and hand grants to the grant table.

    Expired entries leave the state: a hand grant at its end, a revocation
    once every login it covers is older than the TTL anyway. So does a hand
    grant the policy now refuses (a never-grant network or allow-list set
    since). A `fresh` grant, just asked for, ends when it was asked to,
    earlier than a grant the address had already.
    """
    adjusted = dict(table)
    for key in list(state.revoked):
        adjusted.pop(key, None)
        if state.revoked[key] + ttl <= now:
            del state.revoked[key]

    for key, until in list(state.manual.items()):
        if until <= now:
            del state.manual[key]
            continue
        # Not Postfix's mynetworks: asking postconf every run would cost a
        # no-op run its speed, and granting what Postfix trusts harms nobody.
        refusal = policy.local_refusal(key)
        if refusal:
            log.warning("dropping the hand grant of %s: %s", key, refusal)
            del state.manual[key]
            adjusted.pop(key, None)
            continue
        # Postfix relays while now < TIME + TTL: the latest TIME that still
        # ends at UNTIL. Refreshed only once half the TTL has gone, like an
        # open session, so that postmap does not run every minute for it.
        target = int(min(now, until - ttl))
        current = adjusted.get(key)
        stale = current is None or (current < target and current <= now - ttl / 2)
        if stale or key in fresh:
            adjusted[key] = target
    return adjusted
