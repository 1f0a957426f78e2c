"""Long IMAP sessions: a client that stays connected keeps its grant.

A mail client left open, or idling in IMAP IDLE, logs in once and may stay
connected for hours: its grant must last until the TTL has passed after it
logs out, not after it logged in. Each tracked session is followed from its
login line to its end-of-session line, across runs, by a key both lines share:
Dovecot's session id, else the process id, else user and address (Courier).

A session is followed only once its server (on that host, with that kind of
key) has been seen ending a recorded session with a matching line: a server
whose end lines cannot be matched (Dovecot with a mail_log_prefix that lacks
the session id, say) would otherwise keep every grant for the whole bound.
The bound (--max-session, 12 hours by default) stops a session whose end was
never seen, for a lost line or a server crash, from keeping its grant for ever.
"""

import logging
from dataclasses import dataclass

from popbs_tools.logline import Record
from popbs_tools.recognise import Login
from popbs_tools.state import Session

log = logging.getLogger(__name__)

# Open sessions kept at most; the oldest are dropped first beyond this.
MAX_OPEN = 50_000
# Sessions not followed (yet) are kept only to learn from their end lines:
# a few suffice, and a flood of logins must not fill the state with them.
MAX_UNFOLLOWED = 1_000


def session_key(record: Record, login: Login, pid: str) -> tuple[str, str] | None:
    """(kind, key) for the session a login or end line belongs to, if any.

    `pid` must be the session's own process, not a logger shared by all
    sessions (Dovecot's log process, courierlogger): the rules know which.
    """
    if login.session:
        kind, ident = "session", login.session
    elif pid:
        kind, ident = "pid", pid
    elif login.user and login.ip:
        kind, ident = "client", f"{login.user}@{login.ip}"
    else:
        # Dovecot 2.2's end lines name the user alone: nothing to match by.
        return None
    return kind, f"{record.host}|{login.server}|{kind}:{ident}"


def _source_of(key: str) -> str:
    """ "host|server|kind": whose end lines a session's key depends on."""
    host, server, rest = key.split("|", 2)
    return f"{host}|{server}|{rest.split(':', 1)[0]}"


@dataclass
class Tracker:
    # Every IMAP session with a key whose end has not been seen, followed or
    # not: a session is followed once its source has ended a recorded
    # session with a matching line (it is then in `learned`).
    sessions: dict[str, Session]
    learned: set[str]

    def __post_init__(self) -> None:
        self._unfollowed = {
            key: None for key in self.sessions if _source_of(key) not in self.learned
        }

    def opened(self, record: Record, login: Login, pid: str, when: float) -> None:
        if login.protocol != "imap":
            return  # POP3 sessions last seconds
        found = session_key(record, login, pid)
        if found is None:
            return
        key = found[1]
        session = self.sessions.get(key)
        if session is not None and (session.ip, session.user) == (login.ip, login.user):
            # Several connections of one client (Courier keys by user and
            # address): each end line closes one.
            session.count += 1
            return
        # A new client under a reused pid: the old session's end was lost.
        self.sessions.pop(key, None)
        self.sessions[key] = Session(login.ip, login.user, login.server, when)
        if len(self.sessions) > MAX_OPEN:
            # Dicts keep insertion order: the first key is the oldest login.
            del self.sessions[next(iter(self.sessions))]
        if _source_of(key) not in self.learned:
            self._unfollowed[key] = None
            while len(self._unfollowed) > MAX_UNFOLLOWED:
                oldest = next(iter(self._unfollowed))
                del self._unfollowed[oldest]
                if _source_of(oldest) not in self.learned:
                    self.sessions.pop(oldest, None)

    def ended(self, record: Record, login: Login, pid: str) -> Session | None:
        """Close the session an end line belongs to; return it if it was open.

        Only an end line that closes a recorded session, of the same client,
        teaches that its source's sessions can be followed: a stray or forged
        line, or one of another host, teaches nothing.
        """
        found = session_key(record, login, pid)
        if found is None:
            return None
        key = found[1]
        session = self.sessions.get(key)
        if session is None:
            return None
        if (login.ip and login.ip != session.ip) or (
            login.user and login.user != session.user
        ):
            del self.sessions[key]  # a stale session under a reused pid
            return None
        self.learned.add(_source_of(key))
        session.count -= 1
        if session.count <= 0:
            del self.sessions[key]
        return session

    def expire(
        self, now: float, max_session: int, ttl: int, disabled: frozenset[str]
    ) -> None:
        """Drop sessions past their bound, and those of servers switched off.

        A session not (yet) followed is kept one TTL, long enough for most
        sessions to end and teach that their source can be followed.
        """
        for key, session in list(self.sessions.items()):
            followed = _source_of(key) in self.learned
            bound = max_session if followed else ttl
            if session.server in disabled or now - session.since > bound:
                if followed:
                    log.info(
                        "no end seen for the session of %s (%s) after %ds; "
                        "its grant is no longer refreshed",
                        session.ip,
                        session.user,
                        max_session,
                    )
                del self.sessions[key]

    def connected(self) -> set[str]:
        """Addresses with a followed session still open."""
        return {
            session.ip
            for key, session in self.sessions.items()
            if _source_of(key) in self.learned
        }
