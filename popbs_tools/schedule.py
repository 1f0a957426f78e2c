"""Finding what runs `popbs sync` on a schedule: a crontab or a systemd timer.

Where to look can be changed through the environment, for tests and for
unusual systems (none of these is a popbs setting):
  POPBS_DOCTOR_CRON     system crontab files and directories, colon-separated
                        (default /etc/crontab:/etc/cron.d)
  POPBS_DOCTOR_CRONTAB  the command that lists this user's crontab
                        (default "crontab -l"; empty to skip it)
  POPBS_DOCTOR_UNITS    systemd unit directories, colon-separated
"""

import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CRON = (Path("/etc/crontab"), Path("/etc/cron.d"))
DEFAULT_CRONTAB: tuple[str, ...] = ("crontab", "-l")
DEFAULT_UNITS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
TIMER = "popbs.timer"
SERVICE = "popbs.service"

# "popbs sync", "/usr/local/sbin/popbs sync --config ...",
# "python3 -m popbs_tools sync": the command named popbs, then sync.
_SYNC = re.compile(r"(?:^|[\s/])popbs(?:_tools)?\s+(?:-\S+\s+)*sync(?:\s|$)")
# Debian's cron reads only /etc/cron.d files whose names are made of these
# (run-parts' rule): "popbs.cron" or "popbs~" are ignored.
_CRON_D_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Places:
    cron: tuple[Path, ...] = DEFAULT_CRON
    crontab: tuple[str, ...] = DEFAULT_CRONTAB
    units: tuple[Path, ...] = DEFAULT_UNITS


def places(environ: Mapping[str, str]) -> Places:
    def paths(name: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
        if name not in environ:
            return default
        return tuple(Path(p) for p in environ[name].split(":") if p)

    crontab = DEFAULT_CRONTAB
    if "POPBS_DOCTOR_CRONTAB" in environ:
        crontab = tuple(shlex.split(environ["POPBS_DOCTOR_CRONTAB"]))
    return Places(
        cron=paths("POPBS_DOCTOR_CRON", DEFAULT_CRON),
        crontab=crontab,
        units=paths("POPBS_DOCTOR_UNITS", DEFAULT_UNITS),
    )


@dataclass
class Schedule:
    runs: list[str] = field(default_factory=list)  # where sync is scheduled
    # Entries that never run: why, and what to do.
    ignored: list[tuple[str, str]] = field(default_factory=list)
    disabled_timer: str | None = None  # a popbs.timer not enabled


def runs_sync(line: str) -> bool:
    """Whether a crontab line or ExecStart= runs a sync that publishes.

    A --dry-run publishes nothing, and `echo popbs sync` runs nothing.
    """
    text = line.strip()
    if not text or text.startswith("#") or not _SYNC.search(text):
        return False
    words = text.split()
    return "--dry-run" not in words and "echo" not in words


def find(where: Places) -> Schedule:
    found = Schedule()
    for path in where.cron:
        for crontab in sorted(path.iterdir()) if path.is_dir() else [path]:
            if not _mentions_sync(crontab):
                continue
            if path.is_dir() and not _CRON_D_NAME.fullmatch(crontab.name):
                found.ignored.append(
                    (
                        f"{crontab}: cron skips files whose names have characters "
                        "other than letters, digits, - and _",
                        f"mv {crontab} {path / 'popbs'}",
                    )
                )
            else:
                found.runs.append(str(crontab))
    if where.crontab and _user_crontab_runs_sync(where.crontab):
        found.runs.append(f"the crontab of this user ({' '.join(where.crontab)})")
    _timer(where.units, found)
    return found


def _mentions_sync(path: Path) -> bool:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return any(runs_sync(line) for line in text.splitlines())


def _user_crontab_runs_sync(command: tuple[str, ...]) -> bool:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False  # no cron installed
    return done.returncode == 0 and any(
        runs_sync(line) for line in done.stdout.splitlines()
    )


def _timer(units: tuple[Path, ...], found: Schedule) -> None:
    timer = next((d / TIMER for d in units if (d / TIMER).is_file()), None)
    if timer is None:
        return
    service = next((d / SERVICE for d in units if (d / SERVICE).is_file()), None)
    if service is None or not _execs_sync(service):
        found.ignored.append(
            (
                f"{timer}: its {SERVICE} is missing or does not run popbs sync",
                f"install cron/{SERVICE} beside it, with ExecStart=popbs sync",
            )
        )
        return
    # `systemctl enable` links the timer into timers.target.wants.
    enabled = any((d / "timers.target.wants" / TIMER).exists() for d in units)
    if enabled:
        found.runs.append(str(timer))
    else:
        found.disabled_timer = str(timer)


def _execs_sync(service: Path) -> bool:
    try:
        lines = service.read_text(errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "ExecStart" and runs_sync(value.lstrip("-@:+!")):
            return True
    return False
