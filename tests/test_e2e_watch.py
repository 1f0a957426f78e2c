"""End to end, watching: a POP3 login relays through a real Postfix within
seconds, with no new popbs run; the delay is recorded (not asserted).

`popbs sync --watch` runs as cron would start it, against the real Dovecot
and Postfix of tests/servers.py; the test client retries RCPT TO until
Postfix accepts, like a mail client sending right after checking mail.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import servers

CLIENT = "198.51.100.70"
OUTSIDE = "someone@example.net"


def test_a_pop3_login_relays_within_seconds_while_watching(
    dovecot: servers.DovecotServer,
    postfix: servers.PostfixServer,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    sync = servers.sync_command(dovecot, postfix, state_dir)
    watching = subprocess.Popen(
        [sys.executable, "-m", "popbs_tools", *sync, "--watch", "60s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=postfix.env,
    )
    try:
        assert postfix.rcpt_code(CLIENT, OUTSIDE) == 554
        assert dovecot.pop3_login("alice", "secret", CLIENT)
        logged_in = time.monotonic()

        code, tries = 0, 0
        while code != 250 and time.monotonic() - logged_in < 30:
            code = postfix.rcpt_code(CLIENT, OUTSIDE)
            tries += 1
            if code != 250:
                time.sleep(0.05)
        delay = time.monotonic() - logged_in
        record_property("relay_delay_seconds", round(delay, 3))
        print(f"relay accepted {delay:.3f} s after the login ({tries} tries)")

        assert code == 250, dovecot.log_tail() + postfix.log_tail()
        assert watching.poll() is None  # the same run published it
    finally:
        if watching.poll() is None:
            os.kill(watching.pid, signal.SIGTERM)
        out, err = watching.communicate(timeout=30)
    assert out == ""
