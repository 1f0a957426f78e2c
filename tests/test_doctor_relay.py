"""doctor against a running smtpd: what it finds is what smtpd does.

A real Postfix whose main.cf consults the map after reject_unauth_destination
refuses a granted client; doctor names that; its fix, applied with postconf
and `postfix reload`, makes the same smtpd relay for the client.
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import servers

CLIENT = "198.51.100.7"
OUTSIDE = "someone@example.net"


class LateCheckPostfix(servers.PostfixServer):
    """The test Postfix with the map consulted too late."""

    def _prepare(self) -> None:
        super()._prepare()
        main_cf = self.config_dir / "main.cf"
        text = main_cf.read_text()
        text = text[: text.index("smtpd_relay_restrictions =")]
        text += (
            "smtpd_relay_restrictions = reject_unauth_destination,\n"
            f"    check_client_access {self.map_type}:{self.map_path}\n"
        )
        main_cf.write_text(text)
        backdate(main_cf)


def backdate(path: Path) -> None:
    # Postfix's commands wait while a config file looks freshly edited.
    old = time.time() - 60
    os.utime(path, (old, old))


@pytest.fixture
def late_postfix(server_root: Path) -> Iterator[LateCheckPostfix]:
    server = LateCheckPostfix(
        server_root / "late-postfix", map_path=server_root / "late-map" / "popbs"
    )
    try:
        yield server.start()
    finally:
        leftovers = server.stop()
    assert not leftovers, f"postfix processes outlived its master: {leftovers}"


def doctor(server: servers.PostfixServer) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "popbs_tools",
            "doctor",
            "--map",
            str(server.map_path),
            "--log",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        env={**server.env, "POPBS_DOCTOR_CRON": "", "POPBS_DOCTOR_CRONTAB": ""},
        timeout=60,
    )


def relays_within(server: servers.PostfixServer, seconds: float) -> bool:
    """Whether smtpd comes to accept CLIENT's relay within `seconds`.

    A reload lets each smtpd finish; the next connection may still meet one
    started under the old configuration.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.rcpt_code(CLIENT, OUTSIDE) == 250:
            return True
        time.sleep(0.2)
    return False


def test_doctor_finding_matches_smtpd_and_its_fix_makes_smtpd_relay(
    late_postfix: LateCheckPostfix,
) -> None:
    late_postfix.write_map({CLIENT: int(time.time())})
    assert late_postfix.rcpt_code(CLIENT, OUTSIDE) == 554

    found = doctor(late_postfix)
    lines = found.stdout.splitlines()
    problem = next(line for line in lines if "main.cf:" in line)
    assert problem.endswith("after reject_unauth_destination, too late"), lines
    fix = lines[lines.index(problem) + 1].removeprefix("  fix").strip()
    assert fix.startswith("postconf -e '"), fix

    setting = fix.split("'")[1]
    env = late_postfix.env
    subprocess.run(
        [str(servers.POSTCONF), "-e", setting], env=env, check=True, timeout=60
    )
    backdate(late_postfix.config_dir / "main.cf")
    reload = [str(servers.POSTFIX), "-c", str(late_postfix.config_dir), "reload"]
    subprocess.run(reload, env=env, check=True, capture_output=True, timeout=60)

    assert relays_within(late_postfix, 20), late_postfix.log_tail()
    assert "ok       main.cf restrictions" in doctor(late_postfix).stdout
