"""cron/: the cron.d entry, and the systemd service and timer that replace it.

The units are read as systemd reads them (an INI dialect), checked with
systemd-analyze where it is installed, and their sandbox is rebuilt with
unshare(1) to show that `popbs sync` runs inside it.
"""

import configparser
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from journals import DOVECOT_SERVICE, JournalFile, available, dovecot_message

from popbs_tools import settings

from helpers import POSTMAP, Setup, dovecot_line

CRON = Path(__file__).resolve().parent.parent / "cron"
MAN = CRON.parent / "man"
SERVICE = CRON / "popbs.service"
TIMER = CRON / "popbs.timer"
# Where README's Install section puts the command.
INSTALLED = "/usr/local/sbin/popbs"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _unit(path: Path) -> configparser.ConfigParser:
    # systemd allows a key twice (a list, or a reset with an empty value):
    # strict=False keeps the last, which is what a single-valued key means.
    parser = configparser.ConfigParser(
        strict=False, interpolation=None, delimiters=("=",), comment_prefixes="#;"
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]
    parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    return parser


def _seconds(span: str) -> float:
    """A systemd time span such as 1s, 500ms, 1min 30s."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span):
        total += float(number) * units[unit or "s"]
    return total


def test_the_cron_entry_runs_sync_every_minute_as_root() -> None:
    path = CRON / "popbs"
    text = path.read_text(encoding="utf-8")

    # cron ignores a file in /etc/cron.d whose name has a dot, and a last
    # line without its newline.
    assert re.fullmatch(r"[A-Za-z0-9_-]+", path.name)
    assert text.endswith("\n")
    entries = [
        line.split(maxsplit=6)
        for line in text.splitlines()
        if line.strip() and not line.startswith("#") and "=" not in line.split()[0]
    ]
    assert entries == [["*", "*", "*", "*", "*", "root", "popbs sync --watch 65s"]]
    path_line = next(line for line in text.splitlines() if line.startswith("PATH="))
    assert {"/usr/local/sbin", "/usr/sbin"} <= set(path_line[5:].split(":"))


def test_the_service_runs_sync_once_as_root() -> None:
    service = _unit(SERVICE)["Service"]

    assert service["Type"] == "oneshot"
    # It must end before the timer's next minute: a timer does not start its
    # service while that still runs.
    assert service["ExecStart"].split() == [INSTALLED, "sync", "--watch", "59s"]
    assert service.get("User", "root") == "root"


def test_the_service_may_write_only_the_state_and_the_map_directory() -> None:
    service = _unit(SERVICE)["Service"]

    assert service["ProtectSystem"] == "strict"
    writable = set(service.get("ReadWritePaths", "").split())
    writable |= {
        f"/var/lib/{name}" for name in service.get("StateDirectory", "").split()
    }
    assert writable == {
        str(settings.DEFAULT_STATE_DIR),
        str(settings.DEFAULT_MAP.parent),
    }
    assert service["StateDirectoryMode"] == "0700"
    for setting in ("ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateNetwork"):
        assert service[setting] == "yes", setting


def test_the_service_is_hardened() -> None:
    service = _unit(SERVICE)["Service"]

    for setting in (
        "NoNewPrivileges",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "RestrictSUIDSGID",
        "RestrictRealtime",
        "LockPersonality",
    ):
        assert service[setting] == "yes", setting
    # syslog (/dev/log) and the journal are Unix sockets; nothing else is used.
    assert service["RestrictAddressFamilies"] == "AF_UNIX"
    capabilities = set(service["CapabilityBoundingSet"].split())
    assert capabilities <= {"CAP_DAC_READ_SEARCH", "CAP_SETUID", "CAP_SETGID"}
    assert service["SystemCallFilter"] == "@system-service"


def test_the_timer_fires_every_minute_and_catches_up() -> None:
    timer = _unit(TIMER)

    assert timer["Timer"]["OnCalendar"] in ("minutely", "*:*:00", "*-*-* *:*:00")
    assert timer["Timer"]["Persistent"] == "true"
    # systemd's default accuracy is a whole minute: runs would drift by that.
    assert _seconds(timer["Timer"]["AccuracySec"]) <= 5
    assert timer["Timer"].get("Unit", "popbs.service") == "popbs.service"
    assert timer["Install"]["WantedBy"] == "timers.target"


def _installable_copies(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The units with ExecStart pointing at this checkout's popbs, and a
    MANPATH holding its pages, so that systemd-analyze can check both."""
    units = tmp_path / "units"
    units.mkdir()
    popbs = Path(sys.executable).with_name("popbs")
    assert popbs.exists(), "popbs is not installed in this environment"
    service = SERVICE.read_text().replace(
        f"ExecStart={INSTALLED}", f"ExecStart={popbs}"
    )
    (units / "popbs.service").write_text(service)
    shutil.copy(TIMER, units / "popbs.timer")

    manpath = tmp_path / "man"
    for page in MAN.glob("*.[1-9]"):
        section = manpath / f"man{page.suffix[1:]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(page, section / page.name)
    env = {**os.environ, "MANPATH": str(manpath), "SYSTEMD_LOG_COLOR": "0"}
    return units, env


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    units, env = _installable_copies(tmp_path)

    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "popbs.service", "popbs.timer"],
        cwd=units,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # It warns on stderr about anything it does not like, and checks that
    # the Documentation= pages exist.
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_rates_the_service_safe(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    units, env = _installable_copies(tmp_path)

    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", "popbs.service"],
        cwd=units,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    found = re.search(
        r"Overall exposure level for popbs.service: ([\d.]+)", done.stdout
    )
    assert found, done.stdout + done.stderr
    # 0 is a fully sandboxed service, 10 an unprotected one; a root job that
    # must read the logs and write Postfix's map scores 1.4.
    assert float(found.group(1)) <= 2.0, done.stdout


def _can_unshare() -> bool:
    tools = ("unshare", "ip", "setpriv")
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in tools):
        return False
    done = subprocess.run(
        ["unshare", "--mount", "--net", "true"], capture_output=True, timeout=30
    )
    return done.returncode == 0


# The service's sandbox, rebuilt: PrivateNetwork= gives a network namespace
# whose loopback is up (postconf refuses to run without an active
# interface). Every mount but the kernel's (/proc, /sys, /dev, which
# ProtectKernel*= and PrivateDevices= handle) is made read-only, then the
# writable directories are bound back read-write: ProtectSystem=strict with
# ReadWritePaths=, and stricter, since /tmp stays read-only too. The canary
# proves that the rest is read-only before popbs runs. setpriv applies
# NoNewPrivileges= and CapabilityBoundingSet=; the system call filters are
# not rebuilt.
SANDBOX = r"""
set -eu
ip link set lo up
mount --make-rprivate /
awk '{print $5}' /proc/self/mountinfo | sort -u | while read -r point; do
    case "$point" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    mount -o remount,bind,ro "$point" 2>/dev/null || true
done
for dir in $WRITABLE; do
    mount --bind "$dir" "$dir"
    mount -o remount,bind,rw "$dir"
done
if touch "$CANARY" 2>/dev/null; then
    echo "the sandbox is not read-only" >&2
    exit 99
fi
exec setpriv --no-new-privs --bounding-set="$BOUNDING" -- "$@"
"""


@pytest.mark.skipif(
    not _can_unshare(), reason="needs root, unshare(1), setpriv(1) and ip(8)"
)
@pytest.mark.skipif(POSTMAP is None, reason="Postfix's postmap is not installed")
@pytest.mark.skipif(not available(), reason="systemd-journal-remote is not installed")
def test_sync_runs_in_the_services_sandbox(tmp_path: Path) -> None:
    setup = Setup(tmp_path / "popbs")
    # Logins a minute ago, so that they are within the TTL.
    a_minute_ago = time.time() - 60
    when = time.strftime("%b %e %H:%M:%S", time.localtime(a_minute_ago))
    setup.append(dovecot_line("198.51.100.7", when=when))
    # As rsyslog leaves it on Ubuntu (syslog:adm 0640): root reads it only
    # with CAP_DAC_READ_SEARCH.
    os.chown(setup.log, 65534, 65534)
    setup.log.chmod(0o640)
    journal = JournalFile(tmp_path / "popbs" / "system.journal")
    journal.add(a_minute_ago, dovecot_message("203.0.113.9"), **DOVECOT_SERVICE)
    setup.state_dir.mkdir(mode=0o700)
    canary = tmp_path / "canary"

    # The unit's capabilities; its writable paths mapped onto this set-up's.
    service = _unit(SERVICE)["Service"]
    kept = service["CapabilityBoundingSet"].lower().replace("cap_", "+").split()
    env = {
        "BOUNDING": ",".join(["-all", *kept]),
        **setup.env(),
        "WRITABLE": f"{setup.state_dir} {setup.map_dir}",
        "CANARY": str(canary),
    }
    command = [sys.executable, "-m", "popbs_tools", "sync", *setup.settings()]
    command += ["--journal-file", str(journal.path)]
    done = subprocess.run(
        ["unshare", "--mount", "--net", "sh", "-c", SANDBOX, "sandbox", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert not canary.exists()
    assert setup.query("198.51.100.7") is not None
    assert setup.query("203.0.113.9") is not None
