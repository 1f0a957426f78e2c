"""The server harness on its own, without popbs: posing works, maps are read.

The map here is built by hand with the real postmap, so a failure here is the
harness's or the servers', never popbs's.
"""

import re

import servers

STAMP = 1_700_000_000


def login_lines(log: str, addr: str) -> list[str]:
    """Dovecot's successful-login lines for a client address."""
    return [
        line
        for line in log.splitlines()
        if "-login: Info: Login: " in line and f"rip={addr}," in line
    ]


def test_dovecot_logs_the_posed_client_addresses(
    dovecot: servers.DovecotServer,
) -> None:
    # Each protocol poses as each address family, over each loopback address.
    assert dovecot.pop3_login("alice", "secret", "198.51.100.7")
    assert dovecot.imap_login("bob", "secret", "2001:db8::7", host="::1")
    assert dovecot.pop3_login("bob", "secret", "2001:db8::8", host="::1")
    assert dovecot.imap_login("alice", "secret", "198.51.100.8")
    assert not dovecot.pop3_login("alice", "wrong", "203.0.113.9")
    assert not dovecot.imap_login("bob", "wrong", "203.0.113.10")

    log = dovecot.wait_for_log(
        "rip=198.51.100.7,",
        "rip=2001:db8::7,",
        "rip=2001:db8::8,",
        "rip=198.51.100.8,",
        "rip=203.0.113.9,",
        "rip=203.0.113.10,",
    )
    context = f"\n--- dovecot.log:\n{dovecot.log_tail()}"
    for protocol, user, addr in [
        ("pop3", "alice", "198.51.100.7"),
        ("imap", "bob", "2001:db8::7"),
        ("pop3", "bob", "2001:db8::8"),
        ("imap", "alice", "198.51.100.8"),
    ]:
        lines = login_lines(log, addr)
        assert len(lines) == 1, f"{addr}: {lines}{context}"
        # Local time in the default syslog-like format popbs reads.
        assert re.match(
            rf"[A-Z][a-z]{{2}} [ 0-3]\d \d\d:\d\d:\d\d {protocol}-login: Info: "
            rf"Login: user=<{user}>, method=PLAIN, rip={re.escape(addr)}, ",
            lines[0],
        ), lines[0] + context
    for user, addr in [("alice", "203.0.113.9"), ("bob", "203.0.113.10")]:
        assert login_lines(log, addr) == [], context
        mismatch = rf"passwd-file\({user},{addr},<[^>]+>\): Password mismatch"
        assert re.search(rf"auth: Info: {mismatch}", log), context
        closing = [line for line in log.splitlines() if f"rip={addr}," in line]
        assert len(closing) == 1 and "(auth failed, 1 attempts" in closing[0], context


def test_postfix_relays_only_for_clients_in_the_map(
    postfix: servers.PostfixServer,
) -> None:
    postfix.write_map({"198.51.100.7": STAMP, "2001:db8::7": STAMP})
    context = f"\n--- postfix.log:\n{postfix.log_tail()}"

    # Both loopback addresses serve, and both address families can be posed.
    for host in servers.LOOPBACK:
        for addr in ("198.51.100.7", "2001:db8::7"):
            code, text = postfix.rcpt_reply(addr, host=host)
            assert code == 250, f"{addr} via {host}: {code} {text}{context}"
        for addr in ("203.0.113.9", "192.0.2.99", "2001:db8::99"):
            code, text = postfix.rcpt_reply(addr, host=host)
            assert (code, "Relay access denied" in text) == (554, True), (
                f"{addr} via {host}: {code} {text}{context}"
            )
    # Mail for this host itself needs no grant: only relaying is restricted.
    local = f"postmaster@{servers.POSTFIX_HOSTNAME}"
    assert postfix.rcpt_code("192.0.2.99", local) == 250, postfix.log_tail()

    log = postfix.log_path.read_text()
    assert "RCPT from unknown[192.0.2.99]: 554 5.7.1" in log, postfix.log_tail()
    assert "client=unknown[2001:db8::7]" in log, postfix.log_tail()


def test_postfix_sees_a_rebuilt_map_at_once(postfix: servers.PostfixServer) -> None:
    postfix.write_map({"198.51.100.7": STAMP})
    assert postfix.rcpt_code("198.51.100.7") == 250, postfix.log_tail()
    assert postfix.rcpt_code("192.0.2.99") == 554, postfix.log_tail()

    # Within the same second: the smtpd that read the old map must notice.
    postfix.write_map({"192.0.2.99": STAMP})
    assert postfix.rcpt_code("198.51.100.7") == 554, postfix.log_tail()
    assert postfix.rcpt_code("192.0.2.99") == 250, postfix.log_tail()
