"""Why a log line grants relay, or why not: the answers of `popbs explain`.

A line is judged as a scan would judge it (the same rules, servers switched
off, never-grant policy and year guessing), but on its own: a login whose
address is on another line of its process cannot be paired here.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from popbs_tools import logline, recognise
from popbs_tools.addresses import Policy
from popbs_tools.logline import Record
from popbs_tools.recognise import Login, Outcome, Recogniser, Role, Verdict
from popbs_tools.settings import RuleSpec
from popbs_tools.timestamps import YearGuesser, format_local

# The header forms logline.parse reads, named for a line it cannot.
KNOWN_HEADERS = (
    "syslog 'Mmm dd hh:mm:ss host tag[pid]: message', or with an ISO 8601 time",
    "RFC 5424 '<pri>1 time host app procid msgid sd message'",
    "Dovecot's log_path 'service: Mmm dd hh:mm:ss message'",
    "multilog '@tai64n tag: message'",
    "qpopper's trace file 'Day Mmm dd hh:mm:ss yyyy [pid] message'",
    "Zimbra's 'yyyy-mm-dd hh:mm:ss,ms LEVEL [thread] message'",
)

CANNOT_PAIR = (
    "explain reads lines one by one and cannot pair them: scan the log "
    "(popbs scan FILE) to see the pair"
)


@dataclass(frozen=True)
class Explanation:
    grants: bool
    text: str


def _no(text: str) -> Explanation:
    return Explanation(False, f"no grant: {text}")


def _at(when: float | None) -> str:
    return "" if when is None else f" at {int(when)} ({format_local(when)})"


def _session(login: Login, pid: str) -> str:
    """The rule and what identifies the session, in parentheses."""
    parts = [f"rule {login.rule}"]
    if login.session:
        parts.append(f"session {login.session}")
    if pid:
        parts.append(f"pid {pid}")
    return f"({', '.join(parts)})"


def _who(login: Login, noun: str = "login") -> str:
    user = repr(login.user) if login.user else "an unnamed user"
    source = f" from {login.ip}" if login.ip else ""
    return f"{login.server} {login.protocol} {noun} of {user}{source}"


@dataclass
class Explainer:
    """Explains lines in order, as one log: the year of a yearless time is
    guessed from the lines before it, with `now` as the reference."""

    recogniser: Recogniser
    # Every rule, switched-off servers' too, to say when one of them matches.
    everything: Recogniser
    disabled: frozenset[str]
    policy: Policy
    now: float
    _guesser: YearGuesser = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._guesser = YearGuesser(self.now)

    def explain(self, line: str) -> Explanation:
        record = logline.parse(line)
        if record is None:
            return _no(
                "not a log line popbs understands; it reads " + "; ".join(KNOWN_HEADERS)
            )
        verdict = self.recogniser.judge(record)
        when = self._guesser.resolve(record.stamp)
        if verdict.outcome in (Outcome.NO_RULE, Outcome.NO_MATCH):
            return self._unmatched(record, verdict)
        return self._answer(verdict, when)

    def _unmatched(self, record: Record, verdict: Verdict) -> Explanation:
        """No rule in use matched; a rule of a switched-off server may have."""
        switched_off = self._switched_off(record)
        if switched_off is not None:
            return switched_off
        if verdict.outcome is Outcome.NO_RULE:
            return _no(verdict.reason)
        rules, _ = self.recogniser.candidates(record)
        servers = ", ".join(sorted({rule.server for rule in rules}))
        return _no(
            f"rules of {servers} read program tag {record.tag!r}, but none "
            "matches this message"
        )

    def _switched_off(self, record: Record) -> Explanation | None:
        if not self.disabled:
            return None
        rule = self.everything.rule_named(self.everything.judge(record).rule)
        if rule is None or rule.server not in self.disabled:
            return None
        return _no(
            f"server {rule.server} is switched off (--disable, disable =); "
            f"its rule {rule.name} matches this line"
        )

    def _answer(self, verdict: Verdict, when: float | None) -> Explanation:
        if verdict.login is not None:
            return self._login(verdict.login, when)
        if verdict.step is not None and verdict.step.role is Role.LOGOUT:
            step = verdict.step
            assert step.login is not None
            who = f"{_who(step.login, 'session')} {_session(step.login, step.pid)}"
            return _no(f"end of session: {who}{_at(when)}")
        if verdict.step is not None:
            return self._pairing(verdict, when)
        if verdict.outcome is Outcome.FAILED:
            return _no(f"rule {verdict.rule} matched a {verdict.reason}{_at(when)}")
        if verdict.outcome in (Outcome.AMBIGUOUS, Outcome.UNUSABLE):
            return _no(f"rule {verdict.rule} matched, but {verdict.reason}")
        return _no(verdict.reason)

    def _login(self, login: Login, when: float | None) -> Explanation:
        what = f"{_who(login)} {_session(login, '')}"
        refusal = self.policy.refusal(login.ip)
        if refusal:
            return _no(f"{login.ip} is never granted ({refusal}): {what}")
        if when is None:
            return _no(f"the line's time cannot be resolved, so a scan skips: {what}")
        return Explanation(True, f"grant {login.ip}: {what}{_at(when)}")

    def _pairing(self, verdict: Verdict, when: float | None) -> Explanation:
        """A line that only counts together with another line of its process."""
        step = verdict.step
        assert step is not None
        process = f"process {step.pid} (rule {verdict.rule})"
        if step.role is Role.ADDRESS:
            return _no(
                f"address line: {step.family} process {step.pid} serves "
                f"{step.ip} (rule {verdict.rule}){_at(when)}; its login comes "
                f"on a later line, and {CANNOT_PAIR}"
            )
        if step.role is Role.SESSION_LOGIN:
            assert step.login is not None
            return _no(
                f"{_who(step.login)} without its address, {process}{_at(when)}; "
                f"the address is on an earlier line of the process, and "
                f"{CANNOT_PAIR}"
            )
        return _no(
            f"end of session of {process}{_at(when)}: a scan forgets the "
            "address an earlier line of the process gave"
        )


def build_explainer(
    specs: Iterable[RuleSpec], disabled: frozenset[str], policy: Policy, now: float
) -> Explainer:
    """An Explainer for these settings; raises SettingsError on a bad rule."""
    specs = tuple(specs)
    return Explainer(
        recognise.build(specs, disabled),
        recognise.build(specs),
        disabled,
        policy,
        now,
    )
