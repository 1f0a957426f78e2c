"""The grant file format, merge and prune."""

import pytest

from popbs_tools import grants
from popbs_tools.errors import MapError


def test_render_is_header_then_sorted_ip_time_lines() -> None:
    data = grants.render(
        {"2001:db8::1": 5, "198.51.100.20": 3, "198.51.100.3": 4, "10.0.0.1": 9}
    )
    lines = data.decode().splitlines()
    assert lines[0].startswith("# popbs-tools")
    assert lines[1:] == [
        "10.0.0.1 9",
        "198.51.100.3 4",
        "198.51.100.20 3",
        "2001:db8::1 5",
    ]
    assert all(not line[:1].isspace() for line in lines)
    assert data.endswith(b"\n")


def test_round_trip() -> None:
    table = {"198.51.100.7": 1796395211, "2001:db8::7": 1796395212}
    assert grants.parse(grants.render(table)) == table


def test_parse_normalises_and_keeps_newest() -> None:
    data = b"# c\n::ffff:198.51.100.7 10\n198.51.100.7 20\n2001:DB8:0::7 30\n"
    assert grants.parse(data) == {"198.51.100.7": 20, "2001:db8::7": 30}


@pytest.mark.parametrize(
    "line",
    [
        b"198.51.100.7 1796395211 # note",
        b" 198.51.100.7 1",
        b"unknown 1",
        b"198.51.100.7",
        b"198.51.100.7 OK",
        b"198.51.100.7/24 1",
    ],
    ids=[
        "trailing-comment",
        "leading-space",
        "hostname",
        "no-time",
        "non-digit",
        "network",
    ],
)
def test_parse_refuses_what_postfix_would_misread(line: bytes) -> None:
    with pytest.raises(MapError, match="line 2"):
        grants.parse(b"# header\n" + line + b"\n")


def test_merge_keeps_newest_and_clamps_future_to_now() -> None:
    merged = grants.merge(
        {"198.51.100.7": 100, "198.51.100.8": 100},
        [("198.51.100.7", 50), ("198.51.100.8", 150), ("198.51.100.9", 999)],
        now=200,
    )
    assert merged == {"198.51.100.7": 100, "198.51.100.8": 150, "198.51.100.9": 200}


def test_merge_is_idempotent() -> None:
    logins = [("198.51.100.7", 150.0)]
    once = grants.merge({}, logins, now=200)
    assert grants.merge(once, logins, now=200) == once


def test_prune_drops_grants_at_and_past_ttl() -> None:
    table = {"198.51.100.7": 1000, "198.51.100.8": 1001}
    assert grants.prune(table, ttl=100, now=1100) == {"198.51.100.8": 1001}
    assert grants.prune(table, ttl=100, now=1099.9) == table
