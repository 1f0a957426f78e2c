"""Recognition: every corpus line gives exactly the expected login, or none."""

import json
from pathlib import Path

import pytest

from popbs_tools.addresses import Policy
from popbs_tools.recognise import BUILTIN_RULES, Recogniser, Role, judge_line
from popbs_tools.scan import Found, Interpreter
from popbs_tools.scanner import Source

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
