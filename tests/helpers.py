"""A popbs set-up in a temp directory, with Postfix's real postmap."""

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SBIN = "/usr/sbin:/usr/local/sbin"
POSTMAP = shutil.which("postmap", path=f"{os.environ.get('PATH', '')}:{SBIN}")
POSTCONF = shutil.which("postconf", path=f"{os.environ.get('PATH', '')}:{SBIN}")


@dataclass
class Setup:
    """Paths for one popbs installation, and a runner for the real command."""

    root: Path
    map_type: str = "hash"
    logs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        # An empty main.cf of our own: postmap and postconf need one, and the
        # tests must never read or change the system's Postfix configuration.
        self.mail_config = self.root / "postfix"
        self.mail_config.mkdir(parents=True, exist_ok=True)
        main_cf = self.mail_config / "main.cf"
        if not main_cf.exists():
            # Postfix's default mynetworks comes from this host's interfaces
            # (the test machine's own network may be 192.0.2.0/24): pinned,
            # so that what popbs refuses as trusted does not depend on it.
            main_cf.write_text("mynetworks = 127.0.0.0/8 [::1]/128\n")
        # Postfix's commands wait up to 2 s while main.cf looks freshly
        # edited (modified within the last second or so).
        an_hour_ago = time.time() - 3600
        os.utime(main_cf, (an_hour_ago, an_hour_ago))
        self.map_dir = self.root / "maps"
        self.map_dir.mkdir(exist_ok=True)
        self.map = self.map_dir / "popbs"
        self.state_dir = self.root / "state"
        if not self.logs:
            self.logs = [self.root / "mail.log"]

    @property
    def log(self) -> Path:
        return self.logs[0]

    @property
    def db(self) -> Path:
        suffix = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}
        return self.map.with_name(self.map.name + suffix[self.map_type])

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POPBS_")}
        env["MAIL_CONFIG"] = str(self.mail_config)
        return env

    def settings(self) -> list[str]:
        args = ["--map", str(self.map), "--state-dir", str(self.state_dir)]
        args += ["--map-type", self.map_type]
        for log in self.logs:
            args += ["--log", str(log)]
        return args

    def popbs(
        self, command: str, *args: str, stdin: str = "", check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "popbs_tools", command, *self.settings(), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=120,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"popbs {command} exited {done.returncode}: {done.stderr}"
            )
        return done

    def postconf(self, *assignments: str) -> None:
        """Set main.cf parameters with the real postconf -e."""
        main_cf = self.mail_config / "main.cf"
        subprocess.run(
            [POSTCONF, "-c", str(self.mail_config), "-e", *assignments],
            check=True,
            capture_output=True,
            timeout=60,
        )
        an_hour_ago = time.time() - 3600
        os.utime(main_cf, (an_hour_ago, an_hour_ago))

    def query(self, key: str) -> str | None:
        """What Postfix's map answers for `key`, through the real postmap -q."""
        assert POSTMAP is not None
        done = subprocess.run(
            [POSTMAP, "-q", key, f"{self.map_type}:{self.map}"],
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )
        if done.returncode == 1:
            return None
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def append(self, *lines: str, log: Path | None = None) -> None:
        with open(log or self.log, "a") as handle:
            handle.writelines(line + "\n" for line in lines)


def dovecot_line(ip: str, user: str = "alice", when: str = "Dec  4 14:40:11") -> str:
    return (
        f"{when} mail dovecot: imap-login: Login: user=<{user}>, method=PLAIN, "
        f"rip={ip}, lip=192.0.2.10, mpid=5120, TLS"
    )


def noise(count: int, when: str = "Dec  4 14:40:12") -> list[str]:
    return [
        f"{when} mail postfix/smtpd[{4000 + n}]: connect from unknown[192.0.2.{n}]"
        for n in range(count)
    ]
