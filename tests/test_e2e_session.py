"""End to end: an IMAP client that stays connected to a real Dovecot keeps its
grant in a real Postfix past the TTL, and loses it a TTL after logging out.

The test moves popbs's clock (--now) rather than waiting half an hour; the
log lines and the connection are real.
"""

import subprocess
import sys
import time
from pathlib import Path

import servers

CLIENT = "198.51.100.77"
EARLIER = "198.51.100.78"
TTL = 30 * 60


def popbs(postfix: servers.PostfixServer, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools", *args],
        capture_output=True,
        text=True,
        env=postfix.env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_connected_client_keeps_its_grant_until_it_logs_out(
    dovecot: servers.DovecotServer, postfix: servers.PostfixServer, tmp_path: Path
) -> None:
    sync = servers.sync_command(dovecot, postfix, tmp_path / "state")
    # A session that ends shows popbs that this Dovecot's end lines can be
    # matched to their logins.
    assert dovecot.imap_login("alice", "secret", EARLIER)

    with dovecot.imap_session("bob", "secret", CLIENT):
        dovecot.wait_for_log(f"rip={CLIENT},")
        start = time.time()
        popbs(postfix, *sync)
        assert postfix.rcpt_code(CLIENT) == 250, dovecot.log_tail()

        # 40 minutes on, still connected: the grant was refreshed.
        popbs(postfix, *sync, "--now", str(start + 40 * 60))
        assert postfix.rcpt_code(CLIENT) == 250, dovecot.log_tail()
        assert postfix.rcpt_code(EARLIER) == 554

    dovecot.wait_for_log("imap(bob)")
    # Logged out: the session is closed, so nothing refreshes the grant any
    # more and it ends a TTL after the last refresh (a session still open
    # would be refreshed for up to --max-session, 12 hours).
    popbs(postfix, *sync, "--now", str(start + 41 * 60))
    assert postfix.rcpt_code(CLIENT) == 250
    assert '"sessions": {}' in (tmp_path / "state" / "state.json").read_text()
    popbs(postfix, *sync, "--now", str(start + 40 * 60 + TTL + 60))
    assert postfix.rcpt_code(CLIENT) == 554, dovecot.log_tail()
