"""The quick paths taken for speed (issue 5) give the answers of the slow ones.

addresses.normalise, Policy.refusal and grants.sort_key skip ipaddress for
IPv4 addresses spelt as smtpd spells them; these tests hold them to what
ipaddress itself says, over random and edge-case inputs.
"""

import ipaddress
import random
import re
import subprocess
import sys

import pytest

from popbs_tools import addresses as addresses_module
from popbs_tools import grants
from popbs_tools.addresses import (
    Policy,
    _local_refusal,
    ipv4_number,
    ipv6_number,
    normalise,
)
from popbs_tools.lazyre import LazyPattern


def _by_ipaddress(text: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        return None


def _random_ipv4_spellings(count: int) -> list[str]:
    rng = random.Random(5)
    octets = ["0", "1", "9", "10", "99", "100", "127", "199", "224", "239", "240"]
    octets += ["255", "256", "300", "999", "00", "01", "007", "1000", "", " 1", "1 "]
    octets += ["+1", "-1", "\u0661", "\u00b2", "0x1", "1e2", "25\u0665"]
    spellings = []
    for _ in range(count):
        parts = [rng.choice(octets) for _ in range(rng.choice([3, 4, 4, 4, 5]))]
        spellings.append(".".join(parts))
    spellings += [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(count)]
    return spellings


def test_ipv4_number_agrees_with_ipaddress() -> None:
    for text in _random_ipv4_spellings(5000):
        expected = _by_ipaddress(text)
        number = ipv4_number(text)
        assert (number is not None) == (expected is not None), text
        if number is not None:
            assert number == int(ipaddress.IPv4Address(text)), text


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("[198.51.100.7]", "198.51.100.7"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("198.51.100.07", None),
        ("198.51.100.256", None),
        ("198.51.100", None),
        ("2001:DB8:0::7", "2001:db8::7"),
    ],
)
def test_normalise(text: str, key: str | None) -> None:
    assert normalise(text) == key


@pytest.mark.parametrize(
    "policy",
    [
        Policy(),
        Policy.with_extra(
            [
                ipaddress.ip_network("10.0.0.0/8"),
                ipaddress.ip_network("198.51.100.128/25"),
                ipaddress.ip_network("192.0.2.1/32"),
                ipaddress.ip_network("2001:db8::/32"),
            ]
        ),
        Policy.with_extra(
            [ipaddress.ip_network("198.51.100.128/25")],
            allow=[
                ipaddress.ip_network("198.51.100.0/24"),
                ipaddress.ip_network("203.0.113.0/24"),
                ipaddress.ip_network("2001:db8::/32"),
            ],
        ),
    ],
    ids=["builtin", "with-never-grant", "with-allow-list"],
)
def test_ipv4_refusal_agrees_with_ipaddress(policy: Policy) -> None:
    rng = random.Random(7)
    edges = [0, 1, 0x00FFFFFF, 0x01000000, 0x7EFFFFFF, 0x7F000000, 0x7FFFFFFF]
    edges += [0x80000000, 0xDFFFFFFF, 0xE0000000, 0xEFFFFFFF, 0xF0000000]
    edges += [0xFFFFFFFF, 0x0A000000, 0x0AFFFFFF, 0x09FFFFFF, 0x0B000000]
    edges += [0xC6336480, 0xC633647F, 0xC63364FF, 0xC0000201, 0xC0000202]
    numbers = edges + [rng.getrandbits(32) for _ in range(20000)]
    for number in numbers:
        key = str(ipaddress.IPv4Address(number))
        assert policy.refusal(key) == _local_refusal(policy, key), key


def test_sort_key_orders_as_ipaddress() -> None:
    rng = random.Random(11)
    keys = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2000)]
    keys += [str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(500)]
    expected = sorted(
        keys,
        key=lambda key: (
            ipaddress.ip_address(key).version,
            int(ipaddress.ip_address(key)),
        ),
    )
    assert sorted(keys, key=grants.sort_key) == expected


def _random_ipv6(rng: random.Random) -> ipaddress.IPv6Address:
    # Runs of zero hextets of every length and place, which decide where
    # RFC 5952 puts the "::".
    hextets = [0 if rng.random() < 0.5 else rng.getrandbits(16) for _ in range(8)]
    if rng.random() < 0.2:
        hextets[:6] = [0, 0, 0, 0, 0, 0xFFFF if rng.random() < 0.5 else 0]
    return ipaddress.IPv6Address(
        sum(h << (16 * (7 - i)) for i, h in enumerate(hextets))
    )


def _spellings(address: ipaddress.IPv6Address, rng: random.Random) -> list[str]:
    compressed = address.compressed
    return [
        compressed,
        address.exploded,
        compressed.upper(),
        f"[{compressed}]",
        f"{compressed}%eth0",
        compressed.replace(":", ":0", 1) if rng.random() < 0.5 else compressed + ":",
    ]


def test_ipv6_keys_agree_with_ipaddress() -> None:
    rng = random.Random(13)
    policy = Policy.with_extra([ipaddress.ip_network("2001:db8:8000::/33")])
    addresses = [_random_ipv6(rng) for _ in range(20000)]
    addresses += [ipaddress.IPv6Address(n) for n in (0, 1, 2, 0xFFFF, 1 << 32)]
    addresses += [ipaddress.IPv6Address("ff02::1"), ipaddress.IPv6Address("fe80::1")]
    addresses += [ipaddress.IPv6Address("2001:db8:8000::1")]
    slow_normalise = addresses_module._normalise.__wrapped__
    quick = 0
    for address in addresses:
        for text in _spellings(address, rng):
            assert normalise(text) == slow_normalise(text), text
        key = normalise(address.compressed)
        assert key is not None
        if ":" in key:
            quick += ipv6_number(key) is not None
            assert ipv6_number(key) in (None, int(address)), key
            # The exploded spelling takes ipaddress's way.
            slow = _local_refusal.__wrapped__(policy, address.exploded)
            assert policy.refusal(key) == slow, key
            assert grants.sort_key(key) == (6, int(address)), key
    assert quick > len(addresses) // 2


def test_importing_the_sync_job_compiles_no_rule_and_imports_no_extras() -> None:
    # A cron run that finds nothing new needs no regex and none of these.
    code = (
        "import sys\n"
        "import popbs_tools.cli\n"
        "from popbs_tools.rules import BUILTIN_RULES\n"
        "print(sum(rule.pattern._compiled is not None for rule in BUILTIN_RULES))\n"
        "heavy = ['subprocess', 'tempfile', 'ctypes', 'lzma', 'bz2', 'gzip',\n"
        "         'configparser', 'secrets', 'socket', 'popbs_tools.explain']\n"
        "print(sorted(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.splitlines() == ["0", "[]"]


def test_lazy_patterns_behave_as_compiled_ones() -> None:
    lazy = LazyPattern(r"(?P<ip>[0-9.]+) x", re.DOTALL)
    assert lazy == LazyPattern(r"(?P<ip>[0-9.]+) x", re.DOTALL)
    assert lazy.groupindex == {"ip": 1}
    match = lazy.fullmatch("1.2.3.4 x")
    assert match is not None and match["ip"] == "1.2.3.4"
    assert lazy.search("a 5.6 x b") is not None and lazy.match("x") is None
