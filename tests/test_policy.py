"""Postfix's mynetworks and the allow-list, read from a real Postfix config."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from popbs_tools.mynetworks import match, parse

from helpers import POSTCONF, POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(
    POSTMAP is None or POSTCONF is None, reason="Postfix's postmap/postconf missing"
)

NOW = "2026-12-04T15:00:00"
TRUSTED = "198.51.100.7"
OTHER = "203.0.113.5"


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    made = Setup(tmp_path)
    made.postconf("mynetworks = 127.0.0.0/8 [::1]/128 198.51.100.0/24")
    return made


def run(
    setup: Setup, command: str, *args: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """setup.popbs with an environment of the test's own."""
    return subprocess.run(
        [sys.executable, "-m", "popbs_tools", command, *setup.settings(), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def granted(setup: Setup) -> list[str]:
    lines = setup.map.read_text().splitlines()[1:]
    return [line.split()[0] for line in lines]


@pytest.mark.parametrize(
    ("value", "key", "entry"),
    [
        ("192.0.2.0/24", "192.0.2.9", "192.0.2.0/24"),
        ("192.0.2.0/24", "192.0.3.9", None),
        ("[2001:db8::]/32", "2001:db8::5", "[2001:db8::]/32"),
        ("[2001:db8::1]", "2001:db8::1", "[2001:db8::1]"),
        ("2001:db8::/32", "2001:db8::5", "2001:db8::/32"),
        ("[::ffff:192.0.2.0]/120", "192.0.2.9", "[::ffff:192.0.2.0]/120"),
        ("!192.0.2.5 192.0.2.0/24", "192.0.2.5", None),
        ("!192.0.2.5 192.0.2.0/24", "192.0.2.6", "192.0.2.0/24"),
        ("192.0.2.0/24 !192.0.2.5", "192.0.2.5", "192.0.2.0/24"),
        ("10.0.0.0/8,192.0.2.0/24", "192.0.2.1", "192.0.2.0/24"),
        ("hash:/etc/postfix/network_table 192.0.2.1", "192.0.2.1", "192.0.2.1"),
        ("cidr:/etc/postfix/nets", "192.0.2.1", None),
        ("!hash:/etc/postfix/x 192.0.2.0/24", "192.0.2.1", "192.0.2.0/24"),
    ],
    ids=[
        "cidr",
        "outside",
        "bracketed-ipv6-len",
        "bracketed-ipv6",
        "bare-ipv6",
        "v4-mapped",
        "negated-first",
        "negation-spares-others",
        "first-match-wins",
        "commas",
        "table-skipped",
        "table-only",
        "negated-table-skipped",
    ],
)
def test_mynetworks_syntax(value: str, key: str, entry: str | None) -> None:
    found = match(parse(value), key)
    assert (found.text if found else None) == entry


def test_a_file_of_networks_is_read(tmp_path: Path) -> None:
    nets = tmp_path / "nets"
    nets.write_text("# ours\n192.0.2.0/24, !198.51.100.9  # why\n198.51.100.0/24\n")
    entries = parse(f"10.0.0.0/8 {nets}")
    assert match(entries, "192.0.2.7") is not None
    assert match(entries, "198.51.100.9") is None
    assert match(entries, "198.51.100.8") is not None
    assert match(parse(str(tmp_path / "missing")), "192.0.2.7") is None


def test_sync_grants_no_address_in_mynetworks(setup: Setup) -> None:
    setup.append(
        dovecot_line(TRUSTED, when="Dec  4 14:50:00"),
        dovecot_line(OTHER, when="Dec  4 14:51:00"),
    )
    done = setup.popbs("sync", "--now", NOW, "-v", check=True)
    assert granted(setup) == [OTHER]
    assert setup.query(TRUSTED) is None
    assert f"not granting {TRUSTED} (in Postfix's mynetworks (198.51.100.0/24))" in (
        done.stderr
    )


def test_ipv6_and_dollar_references_are_understood(setup: Setup) -> None:
    setup.postconf(
        "site_nets = [2001:db8:1::]/48",
        "mynetworks = 127.0.0.0/8 $site_nets hash:/etc/postfix/nets",
    )
    setup.append(
        dovecot_line("2001:db8:1::7", when="Dec  4 14:50:00"),
        dovecot_line("2001:db8:2::7", when="Dec  4 14:50:00"),
    )
    done = setup.popbs("sync", "--now", NOW, "-v", check=True)
    assert granted(setup) == ["2001:db8:2::7"]
    assert "'hash:/etc/postfix/nets' is not a network" in done.stderr


@pytest.mark.parametrize(
    "how", ["option", "environment", "config"], ids=["option", "env", "config"]
)
def test_the_check_can_be_switched_off(setup: Setup, how: str) -> None:
    setup.append(dovecot_line(TRUSTED, when="Dec  4 14:50:00"))
    args = ["--now", NOW]
    env = setup.env()
    if how == "option":
        args.append("--no-trust-mynetworks")
    elif how == "environment":
        env["POPBS_TRUST_MYNETWORKS"] = "no"
    else:
        config = setup.root / "popbs.conf"
        config.write_text("[popbs]\ntrust_mynetworks = no\n")
        args += ["--config", str(config)]
    done = run(setup, "sync", *args, env=env)
    assert done.returncode == 0, done.stderr
    assert granted(setup) == [TRUSTED]


def test_merge_refuses_an_address_in_mynetworks(setup: Setup) -> None:
    done = setup.popbs("merge", "--now", NOW, stdin=f"{TRUSTED}\n{OTHER}\n")
    assert done.returncode == 0
    assert granted(setup) == [OTHER]
    assert f"not granting {TRUSTED}: in Postfix's mynetworks" in done.stderr


def test_check_says_postfix_lets_a_trusted_address_relay(setup: Setup) -> None:
    done = setup.popbs("check", TRUSTED, "--now", NOW)
    assert done.returncode == 0
    assert "may relay without a grant: it is in Postfix's mynetworks" in done.stdout
    done = setup.popbs("check", TRUSTED, "--now", NOW, "--no-trust-mynetworks")
    assert (done.returncode, done.stdout) == (1, f"{TRUSTED} may not relay: no grant\n")
    # Trusted by Postfix though never granted by popbs: Postfix decides.
    done = setup.popbs("check", "127.0.0.1", "--now", NOW)
    assert done.returncode == 0
    assert "(127.0.0.0/8), so popbs never grants it" in done.stdout


def test_explain_names_mynetworks(setup: Setup) -> None:
    done = setup.popbs("explain", "--now", NOW, dovecot_line(TRUSTED))
    assert done.returncode == 1
    assert f"{TRUSTED} is never granted (in Postfix's mynetworks" in done.stdout


def test_allow_list_grants_only_inside_it(setup: Setup) -> None:
    setup.append(
        dovecot_line(OTHER, when="Dec  4 14:50:00"),
        dovecot_line("203.0.114.5", when="Dec  4 14:50:00"),
        dovecot_line("2001:db8::5", when="Dec  4 14:50:00"),
    )
    allow = ["--allow", "203.0.113.0/24", "--allow", "[2001:db8::]/32"]
    done = setup.popbs("sync", "--now", NOW, "-v", *allow, check=True)
    assert granted(setup) == [OTHER, "2001:db8::5"]
    assert "not granting 203.0.114.5 (outside the allow-list)" in done.stderr

    check = setup.popbs("check", "203.0.114.5", "--now", NOW, *allow)
    assert (check.returncode, check.stdout) == (
        1,
        "203.0.114.5 may not relay: outside the allow-list, never granted\n",
    )


def test_allow_list_from_environment_and_bad_value(setup: Setup) -> None:
    env = setup.env()
    env["POPBS_ALLOW"] = "203.0.114.0/24, 192.0.2.0/24"
    done = run(setup, "merge", "--now", NOW, env=env)
    assert done.returncode == 0
    env["POPBS_ALLOW"] = "203.0.114.0/33"
    done = run(setup, "check", OTHER, env=env)
    assert done.returncode == 2
    assert done.stderr == (
        "popbs: error: bad POPBS_ALLOW: '203.0.114.0/33' is not a CIDR\n"
    )


def spy_postconf(setup: Setup) -> tuple[dict[str, str], Path]:
    """PATH with a postconf that records each call, then runs the real one."""
    bin_dir = setup.root / "bin"
    bin_dir.mkdir()
    calls = setup.root / "postconf-calls"
    spy = bin_dir / "postconf"
    spy.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {POSTCONF} "$@"\n')
    spy.chmod(spy.stat().st_mode | stat.S_IXUSR)
    env = setup.env()
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    return env, calls


def test_postconf_is_asked_only_when_a_grant_is_considered(setup: Setup) -> None:
    env, calls = spy_postconf(setup)
    setup.append(dovecot_line(OTHER, when="Dec  4 14:50:00"))
    assert run(setup, "sync", "--now", NOW, env=env).returncode == 0
    first = calls.read_text().splitlines()
    assert first.count("-xh mynetworks") == 1

    # A run with nothing new, with a grant in the file: no postconf at all.
    assert run(setup, "sync", "--now", "2026-12-04T15:01:00", env=env).returncode == 0
    assert granted(setup) == [OTHER]
    assert calls.read_text().splitlines() == first


def test_failing_postconf_grants_anyway_with_a_note(tmp_path: Path) -> None:
    setup = Setup(tmp_path, map_type="none")
    # A MAIL_CONFIG without main.cf: the real postconf fails.
    os.remove(setup.mail_config / "main.cf")
    setup.append(dovecot_line(TRUSTED, when="Dec  4 14:50:00"))
    quiet = setup.popbs("sync", "--now", NOW)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert granted(setup) == [TRUSTED]

    loud = setup.popbs("check", "203.0.113.99", "--now", NOW, "-v")
    assert "not checking Postfix's mynetworks: postconf -xh mynetworks failed" in (
        loud.stderr
    )


def test_the_ipv4_fast_path_agrees_with_match(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostfixNetworks answers IPv4 by number ranges; match() by ipaddress."""
    import ipaddress
    import random

    from popbs_tools import mynetworks

    value = "10.0.0.0/8 !10.1.0.0/16 10.1.2.0/24 192.0.2.7 [2001:db8::]/32 !127.0.0.0/8"
    entries = parse(value)
    monkeypatch.setattr(
        mynetworks.PostfixNetworks, "_load", staticmethod(lambda: entries)
    )
    trusted = mynetworks.PostfixNetworks()
    rng = random.Random(11)
    numbers = [rng.getrandbits(32) for _ in range(20000)]
    numbers += [0x0A000000, 0x0A010000, 0x0A010201, 0x0A01FFFF, 0xC0000207, 0x7F000001]
    numbers += [rng.randrange(0x0A000000, 0x0B000000) for _ in range(5000)]
    for number in numbers:
        key = str(ipaddress.IPv4Address(number))
        expected = match(entries, key)
        assert trusted.trusts(key) == (expected.text if expected else None), key
    assert trusted.trusts("2001:db8::5") == "[2001:db8::]/32"
