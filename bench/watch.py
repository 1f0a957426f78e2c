#!/usr/bin/env python3
"""Benchmark `popbs sync --watch`: login-to-relay delay, and the cost of idling.

    make bench-watch                               # 4 cron minutes, 60 logins
    .venv/bin/python bench/watch.py --minutes 2 --logins 50 --idle 30

Delay. A real Dovecot and a real Postfix (tests/servers.py: own configs, on
loopback, stopped by PID) run for `--minutes` minutes. A cron stand-in starts
`popbs sync --watch 65s -q` at every minute boundary, exactly as the cron.d
entry does. Meanwhile `--logins` POP3 logins come at random moments of those
minutes (some forced into the last and first seconds of a minute, where one
run hands over to the next); after each, the client asks Postfix to relay
(RCPT TO an outside domain) every 50 ms until it is accepted. The delay runs
from the end of the POP3 login (Dovecot writes its Login line before its +OK
reaches the client) to the 250. Printed: p50, p90, p99 and max.

Idle cost. `popbs sync --watch` over a log that does not change, for `--idle`
seconds (default 60, one cron minute: start-up and first pass included, as
cron pays them every minute), at each poll interval; CPU time (user+system,
from wait4) scaled to an hour, against the cost of the plain cron job it
replaces (60 no-op syncs an hour, the CPU of one measured the same way).
Target: under 1% of a core, that is 36 CPU seconds per hour.

Needs Debian's dovecot and postfix packages (`make system-packages`).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402

OUTSIDE = "someone@example.net"


def popbs_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "popbs_tools", *args]


def cpu_of(argv: list[str], env: dict[str, str]) -> float:
    """User+system CPU seconds of one command and its children, by wait4."""
    process = subprocess.Popen(argv, env=env, cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {process.returncode}")
    return usage.ru_utime + usage.ru_stime


def idle_cost(seconds: float, polls: list[float]) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="popbs-bench-watch-"))
    try:
        mail_config = work / "postfix"
        mail_config.mkdir()
        (mail_config / "main.cf").touch()
        hour_ago = time.time() - 3600
        os.utime(mail_config / "main.cf", (hour_ago, hour_ago))
        env = {**os.environ, "MAIL_CONFIG": str(mail_config)}
        log = work / "mail.log"
        log.write_text(
            "Dec  4 14:40:12 mail postfix/smtpd[4000]: connect from x[192.0.2.1]\n"
        )
        common = ["--log", str(log), "--map", str(work / "popbs")]
        common += ["--state-dir", str(work / "state"), "--map-type", "hash"]
        cpu_of(popbs_argv("sync", *common), env)  # the first run publishes

        once = statistics.median(
            cpu_of(popbs_argv("sync", *common), env) for _ in range(5)
        )
        rows = [
            f"| plain cron, 60 no-op syncs | {once * 60:.2f} | "
            f"{once * 60 / 36:.1%} |"
        ]
        for poll in polls:
            code = (
                "import sys, time\n"
                "from popbs_tools import jobs, settings\n"
                "names = ('config', *settings.KEYS)\n"
                "options = {name: None for name in names}\n"
                f"options.update(log=({str(log)!r},), map={str(work / 'popbs')!r},\n"
                f"    state_dir={str(work / 'state')!r}, map_type='hash',\n"
                "    never_grant=(), journal_file=(), disable=())\n"
                "config = settings.resolve(options, {}, time.time())\n"
                f"jobs.watch(config, {seconds}, poll={poll})\n"
            )
            used = cpu_of([sys.executable, "-c", code], env)
            per_hour = used * 3600 / seconds
            rows.append(
                f"| watching, poll {poll:g} s | {per_hour:.2f} | "
                f"{per_hour / 36:.1%} |"
            )
        return rows
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Cron:
    """Starts `popbs sync --watch 65s -q` at each minute boundary, like cron."""

    def __init__(self, argv: list[str], env: dict[str, str], minutes: int) -> None:
        self.argv, self.env, self.minutes = argv, env, minutes
        self.processes: list[subprocess.Popen[bytes]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for _ in range(self.minutes + 1):
            time.sleep(60 - time.time() % 60)
            self.processes.append(
                subprocess.Popen(
                    [*self.argv, "--watch", "65s", "-q"], env=self.env, cwd=ROOT
                )
            )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def delays(minutes: int, logins: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    root = servers.make_server_root()
    dovecot = servers.DovecotServer(root / "dovecot")
    postfix = servers.PostfixServer(root / "postfix", map_path=root / "map" / "popbs")
    cron = None
    try:
        dovecot.start()
        postfix.start()
        state_dir = root / "state"
        state_dir.mkdir()
        argv = popbs_argv(*servers.sync_command(dovecot, postfix, state_dir))
        cron = Cron(argv, postfix.env, minutes)
        cron.thread.start()

        # Login moments within the minutes after the first cron start; a
        # quarter of them within two seconds of a minute boundary.
        start = (time.time() // 60 + 1) * 60
        moments = []
        for n in range(logins):
            minute = start + 60 * rng.randrange(minutes)
            if n % 4 == 0:
                moments.append(minute + 60 + rng.uniform(-2.0, 2.0))
            else:
                moments.append(minute + rng.uniform(3.0, 57.0))
        measured = []
        for n, moment in enumerate(sorted(moments)):
            client = f"198.51.{100 + n // 250}.{n % 250 + 1}"
            time.sleep(max(0.0, moment - time.time()))
            if not dovecot.pop3_login("alice", "secret", client):
                raise SystemExit(f"login {n} failed:\n{dovecot.log_tail()}")
            logged_in = time.monotonic()
            while postfix.rcpt_code(client, OUTSIDE) != 250:
                if time.monotonic() - logged_in > 120:
                    raise SystemExit(f"{client} never relayed:\n{postfix.log_tail()}")
                time.sleep(0.05)
            measured.append(time.monotonic() - logged_in)
            print(f"login {n + 1}/{logins}: {measured[-1]:.3f} s", file=sys.stderr)
        return measured
    finally:
        if cron is not None:
            cron.stop()
        postfix.stop()
        dovecot.stop()
        servers.remove_server_root(root)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=4)
    parser.add_argument("--logins", type=int, default=60)
    parser.add_argument(
        "--idle", type=float, default=60.0, help="seconds (60: one cron minute)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-delay", action="store_true")
    args = parser.parse_args()

    print("## popbs sync --watch\n")
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print(f"Idle cost over {args.idle:g} s of a quiet log, scaled to an hour:\n")
    print("| | CPU s per hour | of the 1% target |")
    print("|---|---|---|")
    for row in idle_cost(args.idle, [0.1, 0.25, 0.5, 1.0]):
        print(row)
    if args.skip_delay:
        return
    found = delays(args.minutes, args.logins, args.seed)
    print(
        f"\nLogin to relay, {len(found)} POP3 logins over {args.minutes} cron "
        "minutes (target p99 <= 2 s):\n"
    )
    print("| p50 | p90 | p99 | max |")
    print("|---|---|---|---|")
    print(
        f"| {percentile(found, 0.5):.3f} s | {percentile(found, 0.9):.3f} s | "
        f"{percentile(found, 0.99):.3f} s | {max(found):.3f} s |"
    )


if __name__ == "__main__":
    main()
