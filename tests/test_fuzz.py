"""Random and hostile input: no crash, no traceback, no grant from garbage."""

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from popbs_tools import logline, scanner
from popbs_tools.addresses import Policy, normalise
from popbs_tools.recognise import Recogniser
from popbs_tools.scan import Interpreter
from popbs_tools.scanner import Source

RECOGNISER = Recogniser()
NOW = 1796400000.0
PREFIXES = [
    b"Dec  4 14:40:11 mail dovecot: imap-login: Login: ",
    b"Dec  4 14:40:11 mail imapd[1]: Login user=",
    b"Dec  4 14:40:11 mail in.qpopper[1]: (v4.0.9) POP login by user ",
    b"2026-12-04T14:40:11+00:00 mail pop3d: LOGIN, user=",
    b"<30>1 2026-12-04T14:40:11Z mail dovecot 1 - [",
    b"\0\0\0",
]


def interpret(raw: bytes) -> list[str]:
    interpreter = Interpreter(RECOGNISER, Policy(), NOW)
    return [found.ip for found in interpreter.logins([(Source("f", NOW), raw)])]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_grant_nothing(raw: bytes) -> None:
    assert interpret(raw) == []


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(PREFIXES), st.binary(max_size=200))
def test_a_server_prefix_with_random_bytes_grants_only_a_real_address(
    prefix: bytes, tail: bytes
) -> None:
    for ip in interpret(prefix + tail):
        # Whatever was found is a real, grantable address in the line itself.
        assert normalise(ip) == ip
        assert Policy().refusal(ip) is None


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_logline_parse_never_raises(text: str) -> None:
    logline.parse(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(alphabet="0123456789.:abcdefABCDEF[]%x ", max_size=45),
)
def test_addresses_with_leading_zeros_or_out_of_range_are_refused(text: str) -> None:
    key = normalise(text)
    if key is not None:
        assert normalise(key) == key  # a normal form, stable
        assert all(len(part) == 1 or part[0] != "0" for part in key.split("."))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=40))
def test_scanner_offsets_stay_on_line_boundaries(chunks: list[bytes]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "mail.log"
        data = b"".join(chunks)
        log.write_bytes(data)
        reader = scanner.LogScan(log, None, RECOGNISER.markers)
        list(reader.lines())
        assert reader.position is not None
        offset = reader.position.offset
        # After a line end, or after the NUL bytes a copytruncate leaves.
        assert data[offset - 1 : offset] in (b"", b"\n") or not data[:offset].strip(
            b"\0"
        )
        assert b"\n" not in data[offset:]
