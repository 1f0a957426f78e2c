"""`popbs doctor` on a good installation and on broken ones.

Each installation is real: a main.cf and master.cf that the real postconf
reads (through MAIL_CONFIG), a map built by the real postmap, a state dir
made by a real sync, a cron.d file (the repository's own cron/popbs).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import servers
from helpers import POSTMAP, Setup, dovecot_line

pytestmark = pytest.mark.skipif(
    POSTMAP is None or os.geteuid() != 0,
    reason="needs Postfix's postmap, and root (as sync runs from cron)",
)

REPO = Path(__file__).resolve().parent.parent
NOW = ("--now", "2026-12-04T14:45:00")
CHECKS = (
    "postmap and map type",
    "main.cf restrictions",
    "master.cf overrides",
    "map and state permissions",
    "logs",
    "schedule",
)
GOOD_MASTER = (
    "submission inet n - n - - smtpd\n"
    "  -o syslog_name=postfix/submission\n"
    "  -o smtpd_relay_restrictions=permit_sasl_authenticated,$popbs_check,reject\n"
)


class Installation(Setup):
    """A Setup whose files the Postfix user can reach, with cron and units."""

    def write_main_cf(self, extra: str = "", restrictions: str | None = None) -> None:
        text = servers.postfix_main_cf(
            directory=self.root, map_path=self.map, map_type=self.map_type
        )
        if restrictions is not None:
            text = text[: text.index("smtpd_relay_restrictions =")] + restrictions
        # What GOOD_MASTER's submission service refers to.
        text += f"popbs_map = {self.map}\n"
        text += f"popbs_check = check_client_access {self.map_type}:$popbs_map\n"
        self._write(self.mail_config / "main.cf", text + extra)

    def write_master_cf(self, extra: str = GOOD_MASTER) -> None:
        text = servers.postfix_master_cf(smtp_port=2525) + extra
        self._write(self.mail_config / "master.cf", text)

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.write_text(text)
        # Postfix's commands wait while a config file looks freshly edited.
        old = time.time() - 3600
        os.utime(path, (old, old))

    def env(self) -> dict[str, str]:
        env = super().env()
        env["POPBS_DOCTOR_CRON"] = f"{self.root / 'crontab'}:{self.root / 'cron.d'}"
        env["POPBS_DOCTOR_CRONTAB"] = ""  # never the machine's own crontab
        env["POPBS_DOCTOR_UNITS"] = str(self.root / "units")
        return env

    def doctor(self) -> subprocess.CompletedProcess[str]:
        return self.popbs("doctor")


@pytest.fixture
def good() -> Iterator[Installation]:
    # Not under pytest's tmp_path: its 0700 parents keep the postfix user out.
    root = servers.make_server_root()
    try:
        setup = Installation(root)
        setup.write_main_cf()
        setup.write_master_cf()
        setup.append(dovecot_line("198.51.100.7"))
        setup.popbs("sync", *NOW, check=True)
        (root / "cron.d").mkdir()
        shutil.copy(REPO / "cron" / "popbs", root / "cron.d" / "popbs")
        (root / "units").mkdir()
        yield setup
    finally:
        shutil.rmtree(root, ignore_errors=True)


def findings(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    """(problem, fix) pairs from doctor's output."""
    lines = done.stdout.splitlines()
    return [
        (line.removeprefix("problem").strip(), fix.removeprefix("  fix").strip())
        for line, fix in zip(lines, lines[1:], strict=False)
        if line.startswith("problem ")
    ]


def only_finding(setup: Installation) -> tuple[str, str]:
    done = setup.doctor()
    assert done.returncode == 1, done.stdout + done.stderr
    found = findings(done)
    assert len(found) == 1, done.stdout
    return found[0]


def test_good_installation_passes_every_check(good: Installation) -> None:
    done = good.doctor()
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert done.stdout.splitlines() == [f"ok       {name}" for name in CHECKS]


def run_fix(setup: Installation, fix: str) -> None:
    """Run the postconf command doctor proposed, as an admin would paste it."""
    command = fix.split(";")[0]
    assert command.startswith("postconf "), fix
    subprocess.run(
        ["/usr/sbin/postconf", *shlex.split(command)[1:]],
        env=setup.env(),
        check=True,
        capture_output=True,
    )
    for name in ("main.cf", "master.cf"):
        old = time.time() - 3600
        os.utime(setup.mail_config / name, (old, old))


def test_missing_check_client_access(good: Installation) -> None:
    good.write_main_cf(
        restrictions="smtpd_relay_restrictions = permit_mynetworks, "
        "permit_sasl_authenticated, reject_unauth_destination\n"
    )
    problem, fix = only_finding(good)
    assert problem == (
        f"main.cf: smtpd_relay_restrictions has no check_client_access hash:{good.map}"
    )
    assert fix == (
        "postconf -e 'smtpd_relay_restrictions = permit_mynetworks, "
        f"permit_sasl_authenticated, check_client_access hash:{good.map}, "
        "reject_unauth_destination'; then run: postfix reload"
    )
    run_fix(good, fix)
    assert good.doctor().returncode == 0


def test_postfix_default_relay_list(good: Installation) -> None:
    # A fresh main.cf: the list is Postfix's default, written as a
    # compatibility_level condition; the fix spells it out.
    good.write_main_cf(restrictions="")
    problem, fix = only_finding(good)
    assert problem.startswith("main.cf: smtpd_relay_restrictions has no")
    assert fix.startswith(
        "postconf -e 'smtpd_relay_restrictions = permit_mynetworks, "
        f"permit_sasl_authenticated, check_client_access hash:{good.map}, "
        "defer_unauth_destination'"
    )
    run_fix(good, fix)
    assert good.doctor().returncode == 0


def test_check_after_reject_unauth_destination(good: Installation) -> None:
    good.write_main_cf(
        restrictions="smtpd_relay_restrictions = permit_mynetworks,\n"
        "    reject_unauth_destination,\n"
        f"    check_client_access hash:{good.map}\n"
    )
    problem, fix = only_finding(good)
    assert problem.endswith("after reject_unauth_destination, too late")
    run_fix(good, fix)
    assert good.doctor().returncode == 0


def test_check_of_another_map_type(good: Installation) -> None:
    good.write_main_cf(
        restrictions=f"smtpd_relay_restrictions = check_client_access "
        f"btree:{good.map}, reject_unauth_destination\n"
    )
    problem, _ = only_finding(good)
    assert f"has check_client_access btree:{good.map}, but popbs builds hash:" in (
        problem
    )


def test_recipient_restrictions_refusing_after_the_relay_list(
    good: Installation,
) -> None:
    # An old main.cf carried over to Postfix 2.10+: relay passes, then the
    # recipient list refuses the POP-before-SMTP client anyway.
    good.write_main_cf(
        extra="smtpd_recipient_restrictions = permit_mynetworks, "
        "reject_unauth_destination\n"
    )
    problem, fix = only_finding(good)
    assert problem.startswith("main.cf: smtpd_recipient_restrictions has no")
    run_fix(good, fix)
    assert good.doctor().returncode == 0


def test_empty_relay_list_moves_the_check_to_recipient_restrictions(
    good: Installation,
) -> None:
    good.write_main_cf(
        restrictions="smtpd_relay_restrictions =\n"
        "smtpd_recipient_restrictions = permit_mynetworks,\n"
        f"    check_client_access hash:{good.map}, reject_unauth_destination\n"
    )
    done = good.doctor()
    assert done.returncode == 0, done.stdout


def test_before_postfix_2_10_the_recipient_list_decides(good: Installation) -> None:
    # postconf reports mail_version as main.cf sets it: here, what an old
    # Postfix would report. Its relay list does not count then.
    good.write_main_cf(
        extra="mail_version = 2.9.4\n"
        "smtpd_recipient_restrictions = permit_mynetworks, "
        "reject_unauth_destination\n"
    )
    problem, fix = only_finding(good)
    assert problem == (
        "main.cf: smtpd_recipient_restrictions has no check_client_access "
        f"hash:{good.map}"
    )
    run_fix(good, fix)
    assert good.doctor().returncode == 0


def test_json_report(good: Installation) -> None:
    good.db.chmod(0o600)
    done = good.popbs("doctor", "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["ok"] is False
    assert [check["check"] for check in report["checks"]] == list(CHECKS)
    failed = [check for check in report["checks"] if not check["ok"]]
    assert [check["check"] for check in failed] == ["map and state permissions"]
    assert failed[0]["findings"][0]["fix"].startswith(f"chmod 644 {good.db}")


def test_restriction_class_and_variable_are_followed(good: Installation) -> None:
    good.write_main_cf(
        restrictions="smtpd_restriction_classes = popbs_class\n"
        "popbs_class = $popbs_inner\n"
        f"popbs_inner = check_client_access hash:{good.map}\n"
        "smtpd_relay_restrictions = permit_mynetworks, popbs_class,\n"
        "    reject_unauth_destination\n"
    )
    done = good.doctor()
    assert done.returncode == 0, done.stdout


def test_submission_override_without_the_check(good: Installation) -> None:
    good.write_master_cf(
        "submission inet n - n - - smtpd\n"
        "  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n"
    )
    problem, fix = only_finding(good)
    assert problem == (
        "master.cf: service submission/inet overrides smtpd_relay_restrictions, "
        f"which has no check_client_access hash:{good.map}"
    )
    assert fix.startswith(
        "postconf -P 'submission/inet/smtpd_relay_restrictions="
        f"permit_sasl_authenticated,check_client_access,hash:{good.map},reject'"
    )
    run_fix(good, fix)
    assert good.doctor().returncode == 0


def test_unreadable_map(good: Installation) -> None:
    good.db.chmod(0o600)
    problem, fix = only_finding(good)
    assert problem == (
        f"the Postfix user postfix cannot read {good.db}: "
        "the file's mode does not let it"
    )
    assert fix.startswith(f"chmod 644 {good.db}")


def test_map_directory_postfix_cannot_enter(good: Installation) -> None:
    good.map_dir.chmod(0o700)
    done = good.doctor()
    assert done.returncode == 1
    assert f"it cannot enter {good.map_dir}" in done.stdout


def test_map_writable_by_others(good: Installation) -> None:
    good.map.chmod(0o666)
    problem, fix = only_finding(good)
    assert problem == (
        f"{good.map} is writable by others, who can grant relay to anyone"
    )
    assert fix == f"chmod go-w {good.map}"


def test_state_dir_open_to_others(good: Installation) -> None:
    good.state_dir.chmod(0o755)
    problem, fix = only_finding(good)
    assert "has mode 0755" in problem
    assert fix == f"chmod 700 {good.state_dir}"


def test_map_type_postfix_cannot_read(good: Installation) -> None:
    # Dynamic map types (cdb, lmdb) come from dynamicmaps.cf; an empty one
    # is a Postfix without the postfix-cdb package.
    meta = good.root / "meta"
    meta.mkdir()
    (meta / "dynamicmaps.cf").touch()
    good.map_type = "cdb"
    good.write_main_cf(extra=f"meta_directory = {meta}\n")
    done = good.doctor()
    assert done.returncode == 1
    found = dict(findings(done))
    problem = "this Postfix does not support map type cdb (postconf -m)"
    assert problem in found, done.stdout
    assert "apt install postfix-cdb" in found[problem]


def test_default_map_type_popbs_cannot_build(good: Installation) -> None:
    good.write_main_cf(extra="default_database_type = dbm\n")
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools", "doctor", "--map", str(good.map)],
        capture_output=True,
        text=True,
        env=good.env(),
    )
    assert done.returncode == 1
    problem, fix = findings(done)[0]
    assert "default_database_type is 'dbm', which popbs cannot build" in problem
    assert fix == "give --map-type, or set default_database_type to hash"


def test_no_cron_entry(good: Installation) -> None:
    (good.root / "cron.d" / "popbs").unlink()
    problem, fix = only_finding(good)
    assert problem == (
        "nothing runs popbs sync: no cron entry and no enabled popbs.timer"
    )
    assert fix.startswith("install -m 644 cron/popbs /etc/cron.d/popbs")


def test_cron_d_file_whose_name_cron_ignores(good: Installation) -> None:
    cron_d = good.root / "cron.d"
    (cron_d / "popbs").rename(cron_d / "popbs.cron")
    done = good.doctor()
    assert done.returncode == 1
    problem, fix = findings(done)[0]
    assert problem.startswith(f"ignored: {cron_d / 'popbs.cron'}: cron skips files")
    assert fix == f"mv {cron_d / 'popbs.cron'} {cron_d / 'popbs'}"


def test_entry_in_the_system_crontab(good: Installation) -> None:
    (good.root / "cron.d" / "popbs").unlink()
    (good.root / "crontab").write_text(
        "# m h dom mon dow user command\n"
        "*/2 * * * * root /usr/local/sbin/popbs sync --config /etc/popbs/x.conf\n"
    )
    assert good.doctor().returncode == 0


def test_commented_out_entry_does_not_count(good: Installation) -> None:
    entry = good.root / "cron.d" / "popbs"
    entry.write_text("# * * * * *  root  popbs sync\n")
    assert good.doctor().returncode == 1


def test_systemd_timer_disabled_then_enabled(good: Installation) -> None:
    (good.root / "cron.d" / "popbs").unlink()
    units = good.root / "units"
    (units / "popbs.timer").write_text("[Timer]\nOnCalendar=minutely\n")
    (units / "popbs.service").write_text(
        "[Service]\nType=oneshot\nExecStart=/usr/local/sbin/popbs sync\n"
    )
    problem, fix = only_finding(good)
    assert problem == f"{units / 'popbs.timer'} is installed but not enabled"
    assert fix == "systemctl enable --now popbs.timer"

    (units / "timers.target.wants").mkdir()
    (units / "timers.target.wants" / "popbs.timer").symlink_to(units / "popbs.timer")
    assert good.doctor().returncode == 0


def test_map_in_a_directory_anyone_may_write(good: Installation) -> None:
    good.map_dir.chmod(0o777)
    done = good.doctor()
    assert done.returncode == 1
    problem, fix = findings(done)[0]
    assert (
        problem == f"{good.map}: {good.map_dir} is writable by everyone and not sticky"
    )
    assert fix == f"chmod o-w {good.map_dir}"


def test_missing_log(good: Installation) -> None:
    good.log.unlink()
    problem, fix = only_finding(good)
    assert problem == f"log {good.log} does not exist"
    assert "--log" in fix and "--journal" in fix


def test_log_that_cannot_be_read(good: Installation) -> None:
    good.log.unlink()
    os.mkfifo(good.log)  # opened as sync opens it: no hang
    problem, fix = only_finding(good)
    assert problem == f"cannot read log {good.log}: not a regular file"
    assert fix == "give --log the log file itself: popbs reads regular files"


def test_log_unreadable_by_the_user_running_doctor(good: Installation) -> None:
    # Root without CAP_DAC_OVERRIDE (as a hardened systemd unit may run it)
    # is refused another user's 0600 file like anyone else.
    os.chown(good.log, 65534, 65534)
    good.log.chmod(0o600)
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    done = subprocess.run(
        [*drop, sys.executable, "-m", "popbs_tools", "doctor", *good.settings()],
        capture_output=True,
        text=True,
        env=good.env(),
    )
    problem, fix = findings(done)[0] if done.returncode == 1 else ("", "")
    assert problem == f"cannot read log {good.log}: Permission denied", done.stdout
    assert "readable by the user that runs popbs sync" in fix
    assert len(findings(done)) == 1, done.stdout


def test_postfix_server_of_the_end_to_end_tests_passes_the_config_checks(
    postfix: servers.PostfixServer,
) -> None:
    # The config that really relays in test_e2e_relay.py: doctor must agree.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "popbs_tools",
            "doctor",
            "--map",
            str(postfix.map_path),
            "--log",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        env={**postfix.env, "POPBS_DOCTOR_CRON": "", "POPBS_DOCTOR_CRONTAB": ""},
    )
    lines = done.stdout.splitlines()
    assert "ok       main.cf restrictions" in lines, done.stdout
    assert "ok       master.cf overrides" in lines, done.stdout


def test_another_mta_skips_postfix_checks_and_runs_no_postconf(
    tmp_path: Path,
) -> None:
    """With --mta exim doctor must not judge (or even ask) Postfix."""
    setup = Setup(tmp_path)
    setup.append("Dec  4 14:40:00 mail syslogd: restart")
    setup.map_type = "none"
    cron = tmp_path / "cron.d"
    cron.mkdir()
    (cron / "popbs").write_text("* * * * *  root  popbs sync --watch 65s\n")
    env = setup.env()
    env["MAIL_CONFIG"] = str(tmp_path / "no-such-postfix")
    env["POPBS_DOCTOR_CRON"] = str(cron)
    env["POPBS_DOCTOR_CRONTAB"] = str(tmp_path / "no-crontab")
    env["POPBS_DOCTOR_UNITS"] = str(tmp_path / "no-units")
    exim = ["--mta", "exim", "--map", str(tmp_path / "exim" / "popbs")]
    (tmp_path / "exim").mkdir()
    base = [sys.executable, "-m", "popbs_tools"]
    setup_args = ["--state-dir", str(setup.state_dir), "--log", str(setup.log)]
    published = subprocess.run(
        [*base, "publish", *setup_args, *exim], env=env, capture_output=True, text=True
    )
    assert published.returncode == 0, published.stderr
    done = subprocess.run(
        [*base, "doctor", *setup_args, *exim], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "main.cf" not in done.stdout and "postmap" not in done.stdout
    assert "ok       logs" in done.stdout


@pytest.mark.parametrize(
    ("line", "runs"),
    [
        ("* * * * *  root  popbs sync --watch 65s", True),
        ("* * * * * root /usr/local/sbin/popbs sync -q", True),
        ("* * * * *  root  popbs sync --dry-run", False),
        ("* * * * *  root  echo popbs sync", False),
        ("# * * * * root popbs sync", False),
    ],
)
def test_what_counts_as_a_scheduled_sync(line: str, runs: bool) -> None:
    from popbs_tools import schedule

    assert schedule.runs_sync(line) is runs
