"""Recognise successful POP3/IMAP logins, and nothing else.

Each rule is tied to the program tags a server logs under and must match the
whole message from its first character. Text that another program logged, or
that a client typed into a user name, can therefore never satisfy a rule: it is
either under another tag, or not at the start of the message. Tokens a rule
relies on must occur exactly once, so a user name such as `x, rip=6.6.6.6` makes
the line ambiguous and grants nothing (poprelayd's CVE-2001-1075 was a regex
that found an address anywhere in the line).
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from popbs_tools import logline
from popbs_tools.addresses import normalise
from popbs_tools.logline import Record


@dataclass(frozen=True)
class Rule:
    name: str
    server: str
    tags: frozenset[str]
    pattern: re.Pattern[str]
    # Bytes that every line this rule matches contains: the scanner only
    # parses lines that hold one of them.
    markers: tuple[bytes, ...]
    once: tuple[str, ...] = ()
    protocol: str | None = None


@dataclass(frozen=True)
class Login:
    ip: str
    user: str
    server: str
    protocol: str
    rule: str
    session: str = ""


@dataclass(frozen=True)
class Verdict:
    """What a rule made of a record: a login, or why there is none."""

    login: Login | None
    reason: str
    rule: str = ""


def _protocol_from_tag(tag: str, service: str | None) -> str:
    name = (service or tag).lower()
    return "pop3" if "pop" in name else "imap"


def _rule(
    name: str,
    server: str,
    tags: Iterable[str],
    pattern: str,
    markers: Iterable[bytes],
    once: Iterable[str] = (),
    protocol: str | None = None,
) -> Rule:
    return Rule(
        name,
        server,
        frozenset(tags),
        re.compile(pattern, re.DOTALL),
        tuple(markers),
        tuple(once),
        protocol,
    )


_IP = r"[0-9A-Fa-f:.]+"
_CYRUS_SERVICES = ("imap", "imaps", "pop3", "pop3s", "imapd", "pop3d")

BUILTIN_RULES: tuple[Rule, ...] = (
    # Dovecot 1.0-2.3 "Login:", 2.4 "Logged in:", with key=value fields in the
    # order login_log_format_elements gives them. Under syslog the ident is
    # "dovecot" and the service comes first; in its own log_path the service
    # is the prefix and a level ("Info: ") may follow.
    _rule(
        "dovecot",
        "dovecot",
        ["dovecot"],
        r"(?:Info: )?(?P<service>imap|pop3)-login: (?:Info: )?"
        r"(?:Login|Logged in): (?P<fields>(?:.*, )?rip=.*)",
        [b"Login: ", b"Logged in: "],
        once=("rip=",),
    ),
    _rule(
        "dovecot-log-path",
        "dovecot",
        ["imap-login", "pop3-login"],
        r"(?:Info: )?(?:Login|Logged in): (?P<fields>(?:.*, )?rip=.*)",
        [b"Login: ", b"Logged in: "],
        once=("rip=",),
    ),
    # Dovecot 0.99: "Login: alice [198.51.100.7]" under the imap-login ident.
    _rule(
        "dovecot-0.99",
        "dovecot",
        ["imap-login", "pop3-login"],
        rf"(?:Info: )?Login: (?P<user>.*) \[(?P<ip>{_IP})\]",
        [b"Login: "],
        once=("[",),
    ),
    _rule(
        "courier",
        "courier",
        [
            "pop3d",
            "pop3d-ssl",
            "imapd",
            "imapd-ssl",
            "courierpop3login",
            "courierpop3d",
            "courierimapd",
            "courierimaplogin",
        ],
        rf"LOGIN, user=(?P<user>[^,]*), ip=\[(?P<ip>{_IP})\]"
        r"(?:, port=\[\d+\])?(?:, protocol=\w+)?(?:, [\w-]+=\S*)*",
        [b"LOGIN, user="],
        once=("ip=[",),
    ),
    # Cyrus: "login: host [ip] user mech User logged in SESSIONID=<...>".
    _rule(
        "cyrus",
        "cyrus",
        [*_CYRUS_SERVICES, *(f"cyrus/{name}" for name in _CYRUS_SERVICES)],
        rf"login: (?:\S+ )?\[(?P<ip>{_IP})\] (?P<user>\S+)(?: as admin)? \S+ "
        r"User logged in(?: .*)?",
        [b"login: "],
        once=("[", "User logged in"),
    ),
    # UW ipop3d/imapd: "Login user=x host=name [ip] nmsgs=1/1" and relatives.
    _rule(
        "uw",
        "uw",
        ["imapd", "ipop3d", "ipop2d", "in.imapd", "in.ipop3d"],
        r"(?:Admin )?(?:Login|Auth|APOP|Authenticated|Preauthenticated|Preauth) "
        rf"user=(?P<user>\S+) host=(?:\S+ )?\[(?P<ip>{_IP})\](?: .*)?",
        [b" user="],
        once=("user=", "host=", "["),
    ),
    # qpopper 2.x-4.x: the address is the last token, after the client-supplied
    # user name and the reverse-DNS name, so it is anchored at the end.
    _rule(
        "qpopper",
        "qpopper",
        ["in.qpopper", "qpopper", "popper", "in.popper", "qpopper3", ""],
        r"(?:\(v[\w.-]+\) )?POP login by user \"(?P<user>.*)\" at \(.*\) "
        rf"(?P<ip>{_IP})(?: \[[\w.]+:\d+\])?",
        [b"POP login by user"],
        protocol="pop3",
    ),
    # qpopper's "Stats:" line closes an authenticated session.
    _rule(
        "qpopper-stats",
        "qpopper",
        ["in.qpopper", "qpopper", "popper", "in.popper", "qpopper3", ""],
        r"(?:\(v[\w.-]+\) )?Stats: (?P<user>\S+) \d+ \d+ \d+ \d+ \S+ "
        rf"(?P<ip>{_IP})(?: \[[\w.]+:\d+\])?",
        [b"Stats: "],
        protocol="pop3",
    ),
)

_DOVECOT_USER = re.compile(r"(?:^|, )user=<(?P<user>.*?)>(?=, |$)", re.DOTALL)
_DOVECOT_RIP = re.compile(rf"(?:^|, )rip=(?P<ip>{_IP})(?=, |$)")
_DOVECOT_SESSION = re.compile(r", session=<(?P<session>[\w+/=-]+)>")


@dataclass
class Recogniser:
    rules: tuple[Rule, ...] = BUILTIN_RULES
    _by_tag: dict[str, list[Rule]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_tag = {}
        for rule in self.rules:
            for tag in rule.tags:
                self._by_tag.setdefault(tag, []).append(rule)

    @property
    def markers(self) -> tuple[bytes, ...]:
        found = dict.fromkeys(marker for rule in self.rules for marker in rule.markers)
        return tuple(found)

    def judge(self, record: Record) -> Verdict:
        rules = self._by_tag.get(record.tag)
        if not rules:
            return Verdict(None, f"no rule for program tag {record.tag!r}")
        reason = f"no {record.tag!r} rule matches this message"
        for rule in rules:
            match = rule.pattern.fullmatch(record.message)
            if not match:
                continue
            for token in rule.once:
                if record.message.count(token) != 1:
                    return Verdict(
                        None, f"{token!r} occurs more than once: ambiguous", rule.name
                    )
            verdict = self._extract(rule, record, match)
            if verdict.login is not None:
                return verdict
            reason = verdict.reason
        return Verdict(None, reason)

    def _extract(self, rule: Rule, record: Record, match: re.Match[str]) -> Verdict:
        groups = match.groupdict()
        session = ""
        if "fields" in groups:
            fields = groups["fields"]
            rip = _DOVECOT_RIP.search(fields)
            user = _DOVECOT_USER.search(fields)
            if rip is None:
                return Verdict(None, "no rip= field", rule.name)
            raw_ip, name = rip["ip"], user["user"] if user else ""
            found = _DOVECOT_SESSION.search(fields)
            session = found["session"] if found else ""
        else:
            raw_ip, name = groups["ip"], groups.get("user") or ""

        ip = normalise(raw_ip)
        if ip is None:
            return Verdict(None, f"{raw_ip!r} is not a valid address", rule.name)
        protocol = rule.protocol or _protocol_from_tag(
            record.tag, groups.get("service")
        )
        login = Login(ip, name, rule.server, protocol, rule.name, session)
        return Verdict(login, "login", rule.name)


def judge_line(recogniser: Recogniser, line: str) -> tuple[Record | None, Verdict]:
    record = logline.parse(line)
    if record is None:
        return None, Verdict(None, "not a log line this tool understands")
    return record, recogniser.judge(record)
