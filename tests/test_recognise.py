"""Recognition: every corpus line gives exactly the expected login, or none."""

import json
from pathlib import Path

import pytest

from popbs_tools.addresses import Policy
from popbs_tools.correlate import Sessions
from popbs_tools.recognise import (
    BUILTIN_RULES,
    Login,
    Outcome,
    Recogniser,
    Role,
    Step,
    build,
    judge_line,
)
from popbs_tools.scan import Found, Interpreter
from popbs_tools.scanner import Source
from popbs_tools.settings import RuleSpec

DATA = Path(__file__).parent / "data"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "logins.jsonl"
NOW = 1796400000.0  # 2026-12-04, after every line of the corpus


def corpus() -> list[object]:
    cases = []
    for number, text in enumerate((DATA / "logins.txt").read_text().splitlines(), 1):
        if not text or text.startswith("#"):
            continue
        expect, line = text.split("\t", 1)
        cases.append(pytest.param(expect, line, id=f"line{number}"))
    return cases


def interpret(line: str) -> Found | None:
    interpreter = Interpreter(Recogniser(), Policy(), NOW)
    found = list(interpreter.logins([(Source("corpus", NOW), line.encode())]))
    assert len(found) <= 1
    return found[0] if found else None


@pytest.mark.parametrize(("expect", "line"), corpus())
def test_corpus_line(expect: str, line: str) -> None:
    found = interpret(line)
    if expect == "none":
        assert found is None
        return
    _, ip, user = expect.split(" ", 2)
    assert found is not None, "expected a grant"
    assert (found.ip, found.user or "-") == (ip, user)


def test_corpus_is_large_and_mixed() -> None:
    expectations = [param.values[0] for param in corpus()]  # type: ignore[attr-defined]
    assert len(expectations) >= 150
    grants = sum(1 for expect in expectations if expect != "none")
    assert 60 <= grants <= len(expectations) - 60


def test_every_login_rule_has_a_granted_corpus_line() -> None:
    recogniser = Recogniser()
    used = set()
    for param in corpus():
        expect, line = param.values  # type: ignore[attr-defined]
        if expect != "none":
            _, verdict = judge_line(recogniser, line)
            used.add(verdict.rule)
    logins = {rule.name for rule in BUILTIN_RULES if rule.role is Role.LOGIN}
    assert logins - used == set()


def test_every_granted_corpus_line_holds_its_rules_marker() -> None:
    # The scanner hands on only lines holding a marker.
    recogniser = Recogniser()
    rules = {rule.name: rule for rule in BUILTIN_RULES}
    for param in corpus():
        expect, line = param.values  # type: ignore[attr-defined]
        if expect != "none":
            _, verdict = judge_line(recogniser, line)
            markers = rules[verdict.rule].markers
            assert any(marker in line.encode() for marker in markers), line


def shared_samples() -> list[object]:
    if not SAMPLES.exists():
        return [pytest.param(None, id="shared-samples-missing", marks=pytest.mark.skip)]
    cases = []
    for number, text in enumerate(SAMPLES.read_text().splitlines(), 1):
        sample = json.loads(text)
        cases.append(pytest.param(sample, id=f"{sample['server']}-{number}"))
    return cases


@pytest.mark.parametrize("sample", shared_samples())
def test_shared_sample(sample: dict[str, str]) -> None:
    found = interpret(sample["line"])
    if sample["expect"] == "none":
        assert found is None
    else:
        assert found is not None
        assert (found.ip, found.user) == (sample["ip"], sample["user"])


def test_protocol_and_server_are_reported() -> None:
    pop = interpret(
        "Dec  4 14:40:11 mail dovecot: pop3-login: Login: user=<alice>, "
        "method=PLAIN, rip=198.51.100.7, lip=192.0.2.10"
    )
    imap = interpret(
        "Dec  4 16:10:00 mail cyrus/imap[5355]: login: h [198.51.100.41] alice "
        "plaintext User logged in"
    )
    assert pop is not None and (pop.server, pop.protocol) == ("dovecot", "pop3")
    assert imap is not None and (imap.server, imap.protocol) == ("cyrus", "imap")


def test_never_grant_network_is_refused() -> None:
    line = (
        "Dec  4 14:40:11 mail dovecot: imap-login: Login: user=<alice>, "
        "method=PLAIN, rip=198.51.100.7, lip=192.0.2.10"
    )
    policy = Policy.with_extra([__import__("ipaddress").ip_network("198.51.100.0/24")])
    interpreter = Interpreter(Recogniser(), policy, NOW)
    assert list(interpreter.logins([(Source("x", NOW), line.encode())])) == []
    assert interpret(line) is not None


def test_text_output_keeps_four_fields() -> None:
    found = Found("198.51.100.7", 1, "a b\tc\\d", "qpopper", "pop3", "x")
    assert found.as_text() == "198.51.100.7 1 a\\x20b\\x09c\\x5cd qpopper"


def test_a_line_with_an_impossible_year_is_skipped_not_fatal() -> None:
    line = (
        "0001-01-01T00:00:00 mail dovecot: imap-login: Login: user=<x>, "
        "method=PLAIN, rip=198.51.100.9, lip=192.0.2.10"
    )
    assert interpret(line) is None


@pytest.mark.parametrize(
    "ip", ["255.255.255.255", "240.0.0.1", "::127.0.0.1", "0.0.0.0", "::"]
)
def test_reserved_and_unspecified_addresses_are_never_granted(ip: str) -> None:
    assert Policy().refusal(ip) is not None


def test_never_grant_given_as_ipv4_mapped_network_matches() -> None:
    from popbs_tools.addresses import parse_network

    policy = Policy.with_extra([parse_network("::ffff:198.51.100.0/120")])
    assert policy.refusal("198.51.100.5") is not None
    assert policy.refusal("198.51.101.5") is None


# Ends of sessions: (line, rule, user, session, pid, address, protocol).
LOGOUTS = [
    pytest.param(
        "Dec  4 15:46:08 mail dovecot: imap(alice)<5120><k9a2kk0MaOsgAQ24>: "
        "Disconnected: Logged out in=10 out=20",
        ("dovecot-logout", "alice", "k9a2kk0MaOsgAQ24", "5120", "", "imap"),
        id="dovecot-2.3",
    ),
    pytest.param(
        "2026-12-04T15:46:37+01:00 mail dovecot[1327]: imap(mo)<5129><i8ILkk0M>: "
        "Connection closed (IDLE running for 0.001 + waiting input for 1748.1 "
        "secs, 2 B in + 10 B out, state=wait-input) in=1290 out=4405",
        ("dovecot-logout", "mo", "i8ILkk0M", "5129", "", "imap"),
        id="dovecot-idle",
    ),
    # The header's pid is Dovecot's log process, shared by every session.
    pytest.param(
        "2026-12-04T15:46:34+01:00 mail dovecot[1327]: imap(hank): Disconnected: "
        "Logged out in=175 out=1335",
        ("dovecot-logout", "hank", "", "", "", "imap"),
        id="dovecot-2.2",
    ),
    pytest.param(
        "Dec 04 14:57:10 imap(alice)<5120><k9a2kk0MaOsgAQ24>: Info: Disconnected "
        "for inactivity in=10 out=20",
        ("dovecot-logout-log-path", "alice", "k9a2kk0MaOsgAQ24", "5120", "", "imap"),
        id="dovecot-log-path",
    ),
    pytest.param(
        "Dec  4 15:46:33 mail dovecot: pop3(gina)<5126><f8ILkk0M>: Disconnected: "
        "Logged out top=0/0, retr=1/1234, del=1/1, size=1234",
        ("dovecot-logout", "gina", "f8ILkk0M", "5126", "", "pop3"),
        id="dovecot-pop3",
    ),
    pytest.param(
        "Dec  4 16:04:03 mail imapd: LOGOUT, user=dave, ip=[::ffff:203.0.113.18], "
        "headers=0, body=0, rcvd=50, sent=400, time=5",
        ("courier-logout", "dave", "", "", "203.0.113.18", "imap"),
        id="courier",
    ),
    pytest.param(
        "Dec  4 16:04:02 mail pop3d[700]: TIMEOUT, user=carol, ip=[2001:db8::31], "
        "port=[50999], top=0, retr=0, rcvd=24, sent=120, time=2",
        ("courier-logout", "carol", "", "", "2001:db8::31", "pop3"),
        id="courier-courierlogger-pid",
    ),
    pytest.param(
        "May  7 13:40:15 mail imapd[26772]: Logout user=alice "
        "host=client.example.org [203.0.113.58]",
        ("uw-logout", "alice", "", "26772", "203.0.113.58", "imap"),
        id="uw",
    ),
    pytest.param(
        "May  7 13:40:17 mail imapd[26774]: Killed (lost mailbox lock) user=carol "
        "host=[203.0.113.60]",
        ("uw-logout", "carol", "", "26774", "203.0.113.60", "imap"),
        id="uw-killed",
    ),
]


@pytest.mark.parametrize(("line", "expect"), LOGOUTS)
def test_end_of_session_lines_name_the_session(
    line: str, expect: tuple[str, ...]
) -> None:
    _, verdict = judge_line(Recogniser(), line)
    step = verdict.step
    assert verdict.login is None and step is not None and step.login is not None
    assert (verdict.reason, step.role, step.ip) == (
        "end of session",
        Role.LOGOUT,
        expect[4],
    )
    login = step.login
    found = (
        verdict.rule,
        login.user,
        login.session,
        step.pid,
        login.ip,
        login.protocol,
    )
    assert found == expect
    assert login.server == step.family == login.rule.split("-")[0]


@pytest.mark.parametrize(
    ("line", "rule", "detail"),
    [
        pytest.param(
            "Jun 13 16:30:54 mail dovecot: imap-login: Disconnected (auth failed, 2 "
            "attempts): user=<bob>, method=PLAIN, rip=203.0.113.187, lip=192.0.2.10",
            "dovecot-failed",
            "Disconnected (auth failed, 2 attempts); user 'bob'; address 203.0.113.187",
            id="dovecot",
        ),
        pytest.param(
            "Dec 04 15:46:27 auth-worker(304): Info: pam(vic,198.51.100.47): "
            "pam_authenticate() failed: Authentication failure",
            "dovecot-auth-failed-log-path",
            "pam_authenticate() failed: Authentication failure; user 'vic'; "
            "address 198.51.100.47",
            id="dovecot-auth-worker",
        ),
        pytest.param(
            "Apr 17 19:17:11 mail courierpop3login: LOGIN FAILED, user=x, "
            "ip=[::ffff:203.0.113.4]",
            "courier-failed",
            "LOGIN FAILED; user 'x'; address 203.0.113.4",
            id="courier",
        ),
        pytest.param(
            "Apr  8 16:32:02 mail ipop3d[21173]: Login failed user=alice auth=alice "
            "host=client.example.org [203.0.113.60]",
            "uw-failed",
            "Login failed; user 'alice'; address 203.0.113.60",
            id="uw",
        ),
        pytest.param(
            "Dec  4 17:32:03 mail perdition.pop3[9104]: Auth: 203.0.113.213:50002->"
            "192.0.2.10:110 client-secure=plaintext authorisation_id=NONE "
            'authentication_id="dave" server="pop.example.org:110" protocol=POP3 '
            'server-secure=plaintext status="failed: Re-Authentication Failure"',
            "perdition-failed",
            "failed: Re-Authentication Failure; address 203.0.113.213",
            id="perdition",
        ),
    ],
)
def test_failed_logins_are_named(line: str, rule: str, detail: str) -> None:
    _, verdict = judge_line(Recogniser(), line)
    assert (verdict.login, verdict.step) == (None, None)
    assert (verdict.rule, verdict.outcome) == (rule, Outcome.FAILED)
    assert verdict.reason == f"failed login: {detail}"


def test_failure_rules_add_no_scanner_markers() -> None:
    failures = [rule for rule in BUILTIN_RULES if rule.role is Role.FAILURE]
    others = tuple(rule for rule in BUILTIN_RULES if rule.role is not Role.FAILURE)
    assert failures and all(rule.markers == () for rule in failures)
    assert Recogniser().markers == Recogniser(others).markers


def test_every_failure_and_logout_rule_has_a_corpus_line() -> None:
    recogniser = Recogniser()
    used = set()
    for param in corpus():
        _, line = param.values  # type: ignore[attr-defined]
        used.add(judge_line(recogniser, line)[1].rule)
    roles = (Role.FAILURE, Role.LOGOUT)
    named = {rule.name for rule in BUILTIN_RULES if rule.role in roles}
    assert named - used == set()


def test_every_corpus_end_of_session_line_holds_a_marker() -> None:
    # The session tracker sees only what the scanner hands on.
    recogniser = Recogniser()
    for param in corpus():
        _, line = param.values  # type: ignore[attr-defined]
        step = judge_line(recogniser, line)[1].step
        if step is not None and step.role is Role.LOGOUT:
            assert any(marker in line.encode() for marker in recogniser.markers), line


def test_a_failure_rule_wins_over_a_broader_rule_of_the_same_tag() -> None:
    broad = RuleSpec("broad", ("dovecot",), r".*rip=(?P<ip>[\d.]+).*", None, "x", ())
    line = (
        "Jun 13 16:30:54 mail dovecot: imap-login: Disconnected (auth failed, 2 "
        "attempts): user=<bob>, method=PLAIN, rip=198.51.100.87, lip=192.0.2.10"
    )
    _, verdict = judge_line(build((broad,)), line)
    assert (verdict.rule, verdict.login) == ("dovecot-failed", None)


def test_an_end_of_session_step_leaves_the_pairing_table_alone() -> None:
    address = Step(Role.ADDRESS, "popa3d", "9001", "198.51.100.140")
    login = Login("", "alice", "popa3d", "pop3", "popa3d")
    session_login = Step(Role.SESSION_LOGIN, "popa3d", "9001", "", login, 60.0)
    logout = Step(Role.LOGOUT, "popa3d", "9001", "", login)
    sessions = Sessions()
    key = ("mail.log", "mail", "popa3d", "9001")
    assert sessions.apply(key, address, NOW) is None
    assert sessions.apply(key, logout, NOW + 1) is None
    assert len(sessions) == 1
    paired = sessions.apply(key, session_login, NOW + 2)
    assert paired is not None and paired.ip == "198.51.100.140"


def test_markers_holding_another_marker_are_left_out() -> None:
    markers = Recogniser().markers
    assert b" user=" in markers and b"LOGIN, user=" not in markers
    assert not any(a != b and a in b for a in markers for b in markers)
