"""Recognise successful POP3/IMAP logins, and nothing else.

Each rule is tied to the program tags a server logs under and must match the
whole message from its first character. Text that another program logged, or
that a client typed into a user name, can therefore never satisfy a rule: it is
either under another tag, or not at the start of the message. Tokens a rule
relies on must occur exactly once, so a user name such as `x, rip=6.6.6.6` makes
the line ambiguous and grants nothing (poprelayd's CVE-2001-1075 was a regex
that found an address anywhere in the line).

The rules themselves are in rules.py.
"""

import re
from dataclasses import dataclass, field

from popbs_tools import logline
from popbs_tools.addresses import normalise
from popbs_tools.logline import Record
from popbs_tools.rules import BUILTIN_RULES, Fields, Role, Rule

__all__ = ["BUILTIN_RULES", "Login", "Recogniser", "Role", "Rule", "Step", "Verdict"]


@dataclass(frozen=True)
class Login:
    ip: str
    user: str
    server: str
    protocol: str
    rule: str
    session: str = ""


@dataclass(frozen=True)
class Step:
    """One line of a session whose address and login are logged apart.

    `login` (for SESSION_LOGIN) has no address yet: the scan takes it from the
    ADDRESS step of the same family and process.
    """

    role: Role
    family: str
    pid: str
    ip: str = ""
    login: Login | None = None
    window: float = 0.0


@dataclass(frozen=True)
class Verdict:
    """What a rule made of a record: a login, a session step, or why neither."""

    login: Login | None
    reason: str
    rule: str = ""
    step: Step | None = None


def _protocol_from_tag(tag: str, service: str | None) -> str:
    name = (service or tag).lower()
    return "pop3" if "pop" in name else "imap"


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
            if verdict.login is not None or verdict.step is not None:
                return verdict
            reason = verdict.reason
        return Verdict(None, reason)

    def _extract(self, rule: Rule, record: Record, match: re.Match[str]) -> Verdict:
        groups = match.groupdict()
        if rule.extract is not None:
            fields = rule.extract(match)
            if isinstance(fields, str):
                return Verdict(None, fields, rule.name)
        else:
            fields = Fields(groups.get("ip") or "", groups.get("user") or "")

        ip = ""
        if rule.role in (Role.LOGIN, Role.ADDRESS):
            found = normalise(fields.ip)
            if found is None:
                return Verdict(None, f"{fields.ip!r} is not a valid address", rule.name)
            ip = found
        protocol = rule.protocol or _protocol_from_tag(
            record.tag, groups.get("service")
        )
        login = Login(ip, fields.user, rule.server, protocol, rule.name, fields.session)
        if rule.role is Role.LOGIN:
            return Verdict(login, "login", rule.name)

        pid = groups.get("pid") or record.pid
        if not pid:
            return Verdict(None, "no process id to pair the lines by", rule.name)
        awaiting = login if rule.role is Role.SESSION_LOGIN else None
        step = Step(rule.role, rule.family, pid, ip, awaiting, rule.window)
        return Verdict(None, f"{rule.role.value} of process {pid}", rule.name, step)


def judge_line(recogniser: Recogniser, line: str) -> tuple[Record | None, Verdict]:
    record = logline.parse(line)
    if record is None:
        return None, Verdict(None, "not a log line this tool understands")
    return record, recogniser.judge(record)
