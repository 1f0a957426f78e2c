"""End to end: logins in a real Dovecot's log let their clients relay through a
real Postfix, after `popbs sync`, until the TTL runs out.

popbs runs as a separate process, the way cron runs it, against the servers of
tests/servers.py; the test poses as remote clients through XCLIENT/ID.
"""

import subprocess
import sys
import time
from pathlib import Path

import servers

POP3_CLIENT = "198.51.100.7"
IMAP_CLIENT = "2001:db8::7"
FAILED_CLIENT = "203.0.113.9"
STRANGER = "192.0.2.99"
OUTSIDE = "someone@example.net"
TTL = 30 * 60  # popbs's default


def popbs(
    postfix: servers.PostfixServer, *args: str
) -> subprocess.CompletedProcess[str]:
    # MAIL_CONFIG points popbs's postconf at the test Postfix, not /etc/postfix.
    return subprocess.run(
        [sys.executable, "-m", "popbs_tools", *args],
        capture_output=True,
        text=True,
        env=postfix.env,
        timeout=60,
    )


def explain(
    dovecot: servers.DovecotServer,
    postfix: servers.PostfixServer,
    *results: subprocess.CompletedProcess[str],
) -> str:
    """What to show when an assertion fails: popbs's output and both logs."""
    parts = [
        f"--- {' '.join(r.args[3:])} -> {r.returncode}\n{r.stdout}{r.stderr}"
        for r in results
    ]
    grant_file = postfix.map_path
    grants = grant_file.read_text() if grant_file.exists() else "(none)\n"
    parts.append(f"--- grant file {grant_file}:\n{grants}")
    parts.append(f"--- dovecot.log:\n{dovecot.log_tail(20)}")
    parts.append(f"--- postfix.log:\n{postfix.log_tail(20)}")
    return "\n" + "\n".join(parts)


def grant_times(grant_file: Path) -> dict[str, int]:
    """The grant file's `IP UNIXTIME` lines as a dict."""
    grants = {}
    for line in grant_file.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            addr, stamp = line.split()[:2]
            grants[addr] = int(stamp)
    return grants


def relay_codes(postfix: servers.PostfixServer) -> dict[str, int]:
    """Postfix's answer to RCPT TO an outside domain, for each test client."""
    return {
        addr: postfix.rcpt_code(addr, OUTSIDE)
        for addr in (POP3_CLIENT, IMAP_CLIENT, FAILED_CLIENT, STRANGER)
    }


def test_logins_let_clients_relay_until_the_ttl_runs_out(
    dovecot: servers.DovecotServer,
    postfix: servers.PostfixServer,
    tmp_path: Path,
) -> None:
    # Before any login nobody relays: the grants below come from the logins.
    assert set(relay_codes(postfix).values()) == {554}, postfix.log_tail()

    before = int(time.time())
    assert dovecot.pop3_login("alice", "secret", POP3_CLIENT)
    assert dovecot.imap_login("bob", "secret", IMAP_CLIENT, host="::1")
    assert not dovecot.pop3_login("alice", "wrong", FAILED_CLIENT)
    after = int(time.time())
    dovecot.wait_for_log(
        f"rip={POP3_CLIENT},", f"rip={IMAP_CLIENT},", f"rip={FAILED_CLIENT},"
    )

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    sync = servers.sync_command(dovecot, postfix, state_dir)
    synced = popbs(postfix, *sync)
    context = explain(dovecot, postfix, synced)
    assert (synced.returncode, synced.stdout) == (0, ""), context

    # Granted at the login's own time, as Dovecot logged it (whole seconds).
    grants = grant_times(postfix.map_path)
    assert set(grants) == {POP3_CLIENT, IMAP_CLIENT}, context
    for addr in (POP3_CLIENT, IMAP_CLIENT):
        assert before <= grants[addr] <= after, context

    codes = relay_codes(postfix)
    context = explain(dovecot, postfix, synced)
    assert codes == {
        POP3_CLIENT: 250,
        IMAP_CLIENT: 250,
        FAILED_CLIENT: 554,
        STRANGER: 554,
    }, context

    # popbs's own view agrees with Postfix's.
    map_args = ["--map", str(postfix.map_path), "--map-type", postfix.map_type]
    listed = popbs(postfix, "list", *map_args)
    checks = {
        addr: popbs(postfix, "check", addr, *map_args)
        for addr in (POP3_CLIENT, IMAP_CLIENT, FAILED_CLIENT, STRANGER)
    }
    context = explain(dovecot, postfix, listed, *checks.values())
    assert listed.returncode == 0, context
    assert POP3_CLIENT in listed.stdout and IMAP_CLIENT in listed.stdout, context
    assert FAILED_CLIENT not in listed.stdout, context
    assert {addr: r.returncode for addr, r in checks.items()} == {
        POP3_CLIENT: 0,
        IMAP_CLIENT: 0,
        FAILED_CLIENT: 1,
        STRANGER: 1,
    }, context

    # A minute past the TTL both grants are gone, and Postfix sees that at once.
    expired = popbs(postfix, *sync, "--now", str(after + TTL + 60))
    codes = relay_codes(postfix)
    context = explain(dovecot, postfix, synced, expired)
    assert (expired.returncode, expired.stdout) == (0, ""), context
    assert grant_times(postfix.map_path) == {}, context
    assert codes == {
        POP3_CLIENT: 554,
        IMAP_CLIENT: 554,
        FAILED_CLIENT: 554,
        STRANGER: 554,
    }, context


def test_grant_and_revoke_by_hand_reach_postfix_at_once(
    postfix: servers.PostfixServer, tmp_path: Path
) -> None:
    settings = ["--map", str(postfix.map_path), "--state-dir", str(tmp_path / "s")]
    assert postfix.rcpt_code(STRANGER, OUTSIDE) == 554

    granted = popbs(postfix, "grant", STRANGER, *settings)
    assert (granted.returncode, granted.stderr) == (0, ""), granted.stderr
    assert postfix.rcpt_code(STRANGER, OUTSIDE) == 250, postfix.log_tail()

    revoked = popbs(postfix, "revoke", STRANGER, *settings)
    assert (revoked.returncode, revoked.stderr) == (0, ""), revoked.stderr
    assert postfix.rcpt_code(STRANGER, OUTSIDE) == 554, postfix.log_tail()
