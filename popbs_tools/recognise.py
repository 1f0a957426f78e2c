"""Recognise successful POP3/IMAP logins, and nothing else.

Each rule is tied to the program tags a server logs under and must match the
whole message from its first character. Text that another program logged, or
that a client typed into a user name, can therefore never satisfy a rule: it is
either under another tag, or not at the start of the message. Tokens a rule
relies on must occur exactly once, so a user name such as `x, rip=6.6.6.6` makes
the line ambiguous and grants nothing (poprelayd's CVE-2001-1075 was a regex
that found an address anywhere in the line).

The rules themselves are in rules.py; `build` adds the config file's rules and
leaves out the servers switched off.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from popbs_tools import logline
from popbs_tools.addresses import normalise
from popbs_tools.errors import SettingsError
from popbs_tools.lazyre import LazyPattern
from popbs_tools.logline import Record
from popbs_tools.rules import BUILTIN_RULES, Fields, Role, Rule
from popbs_tools.settings import RuleSpec

__all__ = [
    "BUILTIN_RULES",
    "Login",
    "Outcome",
    "Recogniser",
    "Role",
    "Rule",
    "Step",
    "Verdict",
    "build",
]


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
    """One line of a session that the scan has to put together with others.

    `login` (for SESSION_LOGIN) has no address yet: the scan takes it from the
    ADDRESS step of the same family and process. For LOGOUT it names the
    session that ended; its pid, session and address may each be empty.
    """

    role: Role
    family: str
    pid: str
    ip: str = ""
    login: Login | None = None
    window: float = 0.0


class Outcome(Enum):
    """What became of a line, for those who explain it."""

    LOGIN = "login"
    STEP = "session step"
    FAILED = "failed login"
    AMBIGUOUS = "ambiguous"
    UNUSABLE = "unusable field"
    NO_MATCH = "no rule matches"
    NO_RULE = "no rule for the tag"
    NOT_LOG_LINE = "not a log line"


@dataclass(frozen=True)
class Verdict:
    """What a rule made of a record: a login, a session step, or why neither."""

    login: Login | None
    reason: str
    rule: str = ""
    step: Step | None = None
    outcome: Outcome = Outcome.NO_MATCH


def _protocol_from_tag(tag: str, service: str | None) -> str:
    name = (service or tag).lower()
    return "pop3" if "pop" in name else "imap"


def _fields(rule: Rule, match: re.Match[str]) -> Fields | str:
    if rule.extract is not None:
        return rule.extract(match)
    groups = match.groupdict()
    return Fields(
        groups.get("ip") or "", groups.get("user") or "", groups.get("session") or ""
    )


def _failure(rule: Rule, match: re.Match[str]) -> Verdict:
    groups = match.groupdict()
    fields = _fields(rule, match)
    if isinstance(fields, str):
        # The extractor's checks guard grants; a failure is reported as found.
        fields = Fields(groups.get("ip") or "", groups.get("user") or "")
    reason = "failed login"
    detail = groups.get("detail")
    if detail:
        reason += f": {detail}"
    if fields.user:
        reason += f"; user {fields.user!r}"
    if fields.ip:
        reason += f"; address {normalise(fields.ip) or fields.ip}"
    return Verdict(None, reason, rule.name, outcome=Outcome.FAILED)


@dataclass
class Recogniser:
    rules: tuple[Rule, ...] = BUILTIN_RULES
    _by_tag: dict[str, list[Rule]] = field(init=False, repr=False)
    _by_name: dict[str, Rule] = field(init=False, repr=False)
    _by_prefix: dict[str, list[Rule]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_tag = {}
        self._by_name = {rule.name: rule for rule in self.rules}
        self._by_prefix = {}
        # Failure rules come first: a line one of them recognises never grants,
        # whatever a broader rule of the same tag would make of it.
        ordered = sorted(self.rules, key=lambda rule: rule.role is not Role.FAILURE)
        for rule in ordered:
            for tag in rule.tags:
                table = self._by_prefix if tag.endswith("(") else self._by_tag
                table.setdefault(tag, []).append(rule)

    @property
    def markers(self) -> tuple[bytes, ...]:
        """What the scanner searches for: one pass over the log each.

        A marker that holds another ("LOGIN, user=" holds " user=") finds no
        line the shorter one misses, so it is left out.
        """
        found = dict.fromkeys(marker for rule in self.rules for marker in rule.markers)
        return tuple(
            marker
            for marker in found
            if not any(other != marker and other in marker for other in found)
        )

    def rule_named(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    def judge(self, record: Record) -> Verdict:
        rules, text = self.candidates(record)
        if not rules:
            return Verdict(
                None, f"no rule for program tag {record.tag!r}", outcome=Outcome.NO_RULE
            )
        best = Verdict(None, f"no {record.tag!r} rule matches this message")
        for rule in rules:
            match = rule.pattern.fullmatch(text)
            if not match:
                continue
            verdict = self._verdict(rule, record, text, match)
            if verdict.outcome is not Outcome.UNUSABLE:
                return verdict
            best = verdict
        return best

    def candidates(self, record: Record) -> tuple[list[Rule], str]:
        """The rules for the record's tag, and the text they must match."""
        rules = self._by_tag.get(record.tag)
        if rules:
            return rules, record.message
        head, paren, _ = record.tag.partition("(")
        rules = self._by_prefix.get(head + paren) if paren else None
        if rules:
            return rules, f"{record.tag}: {record.message}"
        return [], record.message

    def _verdict(
        self, rule: Rule, record: Record, text: str, match: re.Match[str]
    ) -> Verdict:
        if rule.role is Role.FAILURE:
            return _failure(rule, match)
        for token in rule.once:
            if text.count(token) != 1:
                return Verdict(
                    None,
                    f"{token!r} occurs more than once: ambiguous",
                    rule.name,
                    outcome=Outcome.AMBIGUOUS,
                )
        fields = _fields(rule, match)
        if isinstance(fields, str):
            return Verdict(None, fields, rule.name, outcome=Outcome.UNUSABLE)

        ip = normalise(fields.ip) or ""
        if not ip and rule.role in (Role.LOGIN, Role.ADDRESS):
            return Verdict(
                None,
                f"{fields.ip!r} is not a valid address",
                rule.name,
                outcome=Outcome.UNUSABLE,
            )
        groups = match.groupdict()
        protocol = rule.protocol or _protocol_from_tag(
            record.tag, groups.get("service")
        )
        login = Login(ip, fields.user, rule.server, protocol, rule.name, fields.session)
        if rule.role is Role.LOGIN:
            return Verdict(login, "login", rule.name, outcome=Outcome.LOGIN)

        pid = groups.get("pid") or (record.pid if rule.line_pid else "")
        if rule.role is Role.LOGOUT:
            # Sessions are told apart by session id, pid, or user and address,
            # whichever the line has: none of them is required.
            step = Step(Role.LOGOUT, rule.family, pid, ip, login)
            return Verdict(None, "end of session", rule.name, step, Outcome.STEP)
        if not pid:
            return Verdict(
                None,
                "no process id to pair the lines by",
                rule.name,
                outcome=Outcome.UNUSABLE,
            )
        awaiting = login if rule.role is Role.SESSION_LOGIN else None
        step = Step(rule.role, rule.family, pid, ip, awaiting, rule.window)
        return Verdict(
            None, f"{rule.role.value} of process {pid}", rule.name, step, Outcome.STEP
        )


def judge_line(recogniser: Recogniser, line: str) -> tuple[Record | None, Verdict]:
    record = logline.parse(line)
    if record is None:
        return None, Verdict(
            None, "not a log line this tool understands", outcome=Outcome.NOT_LOG_LINE
        )
    return record, recogniser.judge(record)


# The classic shape of a regex that takes exponential time on a line it fails
# to match: a group of one repeated item, itself repeated, as in (a+)+ or
# (?:\w*)*. Only that shape is refused; other slow regexes are not detected.
_NESTED_REPEAT = LazyPattern(
    r"\((?:\?:|\?P<\w+>)?(?:\\.|\[(?:\\.|[^\]\\])*\]|[^()\\\[|])[+*]\??\)"
    r"(?:[+*]|\{\d*,\})"
)


def build(
    specs: Iterable[RuleSpec] = (), disabled: frozenset[str] = frozenset()
) -> Recogniser:
    """The built-in rules and the config file's, less the servers switched off.

    Raises SettingsError, with one line naming the rule, on a bad rule or an
    unknown server name.
    """
    custom = tuple(_custom_rule(spec) for spec in specs)
    rules = BUILTIN_RULES + custom
    _check_names(rules)
    _check_servers(rules, disabled)
    return Recogniser(tuple(rule for rule in rules if rule.server not in disabled))


def _custom_rule(spec: RuleSpec) -> Rule:
    where = f"config rule [rule {spec.name}]"
    if not spec.name:
        raise SettingsError("config rule [rule ] needs a name: [rule NAME]")
    if not spec.tags:
        raise SettingsError(f"{where} needs tag = the program's syslog tag")
    try:
        pattern = re.compile(spec.regex, re.DOTALL)
    except re.error as error:
        raise SettingsError(f"{where}: regex does not compile: {error}") from None
    if "ip" not in pattern.groupindex:
        raise SettingsError(
            f"{where}: regex needs a group (?P<ip>...) for the client address"
        )
    if _NESTED_REPEAT.search(spec.regex):
        raise SettingsError(
            f"{where}: regex repeats a repeated item, as in (a+)+, which can "
            "take exponential time; write it without the nesting"
        )
    markers = spec.markers or spec.tags
    if not all(markers):
        raise SettingsError(f"{where}: a marker may not be empty")
    return Rule(
        name=spec.name,
        server=spec.server,
        tags=frozenset(spec.tags),
        pattern=LazyPattern(spec.regex, re.DOTALL, pattern),
        # Every syslog line of a program holds its tag.
        markers=tuple(marker.encode() for marker in markers),
        protocol=spec.protocol,
        family=spec.server,
    )


def _check_names(rules: tuple[Rule, ...]) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise SettingsError(
                f"config rule [rule {rule.name}]: that name is taken; rule names "
                "must differ from each other and from the built-in ones"
            )
        seen.add(rule.name)


def _check_servers(rules: tuple[Rule, ...], disabled: frozenset[str]) -> None:
    known = sorted({rule.server for rule in rules})
    unknown = sorted(disabled - set(known))
    if unknown:
        raise SettingsError(
            f"cannot disable {unknown[0]!r}: no such server; known: {', '.join(known)}"
        )
