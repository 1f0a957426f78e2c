"""`popbs doctor`: is everything around popbs set up so that a login grants relay?

One function per check, each returning its findings: what is wrong and how to
fix it. Run doctor as the user that runs `popbs sync` (root from cron.d): the
state directory's owner and the logs' readability are judged for that user.
"""

import contextlib
import grp
import os
import pwd
import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from popbs_tools import fsutil, postfix, restrictions, scanner, schedule
from popbs_tools.errors import PopbsError
from popbs_tools.postconf import Postconf, PostconfError, Service
from popbs_tools.settings import Settings

RELAY = "smtpd_relay_restrictions"
RECIPIENT = "smtpd_recipient_restrictions"
RELOAD = "then run: postfix reload"


@dataclass(frozen=True)
class Finding:
    problem: str
    fix: str


@dataclass(frozen=True)
class Context:
    settings: Settings
    places: schedule.Places
    postconf: Postconf | None  # None: postconf cannot be found


Check = Callable[[Context], list[Finding]]


def check_postmap(context: Context) -> list[Finding]:
    """postmap exists and Postfix supports the map type popbs builds."""
    conf = context.postconf
    if conf is None:
        return [Finding("postconf not found", "install Postfix (apt install postfix)")]
    try:
        default = conf.value("default_database_type")
        if not context.settings.map_type_setting and default not in postfix.SUFFIXES:
            return [
                Finding(
                    f"Postfix's default_database_type is {default!r}, which popbs "
                    "cannot build",
                    "give --map-type, or set default_database_type to hash",
                )
            ]
        map_type = context.settings.map_type
        supported = conf.map_types()
    except PopbsError as error:
        return [Finding(str(error), "check the Postfix installation")]
    found = []
    wanted = restrictions.table(map_type, "").rstrip(":")
    if wanted not in supported:
        found.append(
            Finding(
                f"this Postfix does not support map type {wanted} (postconf -m)",
                f"give --map-type one of "
                f"{', '.join(t for t in postfix.MAP_TYPES if t in supported)}, "
                f"or install its package (apt install postfix-{wanted})",
            )
        )
    postmap = context.settings.postmap if map_type != "none" else None
    if postmap is not None and not os.access(postmap, os.X_OK):
        found.append(
            Finding(
                f"postmap not found at {postmap}",
                "install Postfix, or give --postmap with postmap's path",
            )
        )
    return found


def check_main_cf(context: Context) -> list[Finding]:
    """main.cf's restriction lists consult the map before refusing relay."""
    conf = context.postconf
    wanted = _wanted(context.settings)
    if conf is None or wanted is None:
        return []
    try:
        classes = _classes(conf)
        found = []
        for parameter, barriers in _restriction_lists(conf, conf.value):
            items = restrictions.tokens(conf.value(parameter))
            problem = _placement(
                restrictions.expand(items, classes),
                (conf.written(parameter), conf.value(parameter)),
                wanted,
                barriers,
            )
            if problem is not None:
                verdict, fixed = problem
                fix = (
                    f"postconf -e '{parameter} = {fixed}'"
                    if fixed
                    else (
                        f"put check_client_access {wanted} in {parameter} before "
                        f"{' or '.join(barriers[:2])}"
                    )
                )
                found.append(
                    Finding(f"main.cf: {parameter} {verdict}", f"{fix}; {RELOAD}")
                )
    except PopbsError as error:
        return [Finding(f"cannot read main.cf: {error}", "fix what postconf says")]
    return found


def check_master_cf(context: Context) -> list[Finding]:
    """smtpd services whose -o overrides replace the restriction lists."""
    conf = context.postconf
    wanted = _wanted(context.settings)
    if conf is None or wanted is None:
        return []
    try:
        classes = _classes(conf)
        found = []
        for service in conf.services():
            if service.command == "smtpd":
                found += _service_findings(conf, service, wanted, classes)
    except PopbsError as error:
        return [Finding(f"cannot read master.cf: {error}", "fix what postconf says")]
    return found


def _service_findings(
    conf: Postconf, service: Service, wanted: str, classes: dict[str, list[str]]
) -> list[Finding]:
    where = f"{service.name}/{service.type}"

    def lookup(name: str) -> str:
        return service.overrides.get(name, conf.value(name))

    found = []
    for parameter, barriers in _restriction_lists(conf, lookup):
        if parameter not in service.overrides:
            continue  # main.cf's list, checked already
        items = restrictions.tokens(service.overrides[parameter])
        problem = _placement(
            restrictions.expand(items, classes),
            (service.written.get(parameter, ""), service.overrides[parameter]),
            wanted,
            barriers,
            compact=True,
        )
        if problem is None:
            continue
        verdict, fixed = problem
        fix = (
            f"postconf -P '{where}/{parameter}={fixed}'"
            if fixed
            else (
                f"add check_client_access {wanted} to its -o {parameter}, "
                "or remove that override"
            )
        )
        found.append(
            Finding(
                f"master.cf: service {where} overrides {parameter}, which {verdict}",
                f"{fix}; {RELOAD}",
            )
        )
    return found


def _placement(
    items: list[str],
    forms: tuple[str, str],
    wanted: str,
    barriers: tuple[str, ...],
    compact: bool = False,
) -> tuple[str, str | None] | None:
    """None if the check is placed well; else what is wrong and a fixed list.

    The fixed list is made from the list as written, so that its $names
    stay; else (a default such as ${{$compatibility_level} ...}) from the
    expanded one, which is the same list today.
    """
    verdict = restrictions.judge(items, wanted, barriers)
    if verdict.problem is None:
        return None
    written, expanded = forms
    fixed = restrictions.corrected(written, wanted, barriers, compact)
    if fixed is None:
        fixed = restrictions.corrected(expanded, wanted, barriers, compact)
    return verdict.problem, fixed


def check_permissions(context: Context) -> list[Finding]:
    """The map is safe and readable by Postfix; the state dir is the runner's."""
    settings = context.settings
    try:
        owner = context.postconf.value("mail_owner") if context.postconf else ""
    except PopbsError:
        owner = ""
    if settings.mta != "postfix":
        # Which user reads the table is the other MTA's business.
        owner = "root"
    found = []
    try:
        built = postfix.map_file(settings.map_path, settings.map_type)
    except PopbsError:
        built = None
    for path in (settings.map_path, built):
        if path is not None:
            found += _map_file(path, owner or "postfix")
    found += _state_dir(settings.state_dir)
    return found


def check_logs(context: Context) -> list[Finding]:
    """Every configured log can be read by this user."""
    settings = context.settings
    found = []
    for path in settings.logs:
        try:
            # As sync opens it: a FIFO must not hang doctor either.
            with scanner.open_log(path) as handle:
                handle.read(1)
        except FileNotFoundError:
            found.append(
                Finding(
                    f"log {path} does not exist",
                    "give the POP3/IMAP server's log with --log (with no syslog "
                    "daemon, read the journal with --journal)",
                )
            )
        except PermissionError as error:
            found.append(
                Finding(
                    f"cannot read log {path}: {error.strerror}",
                    "make the log readable by the user that runs popbs sync "
                    "(Debian's mail.log is readable by group adm), or run sync "
                    "as root",
                )
            )
        except OSError as error:
            found.append(
                Finding(
                    f"cannot read log {path}: {error.strerror}",
                    "give --log the log file itself: popbs reads regular files",
                )
            )
    journal = settings.journal and not settings.journal_files
    if journal and shutil.which("journalctl") is None:
        found.append(
            Finding("--journal is on but journalctl is missing", "install systemd")
        )
    for path in settings.journal_files:
        if not os.access(path, os.R_OK):
            found.append(
                Finding(f"cannot read journal file {path}", "check --journal-file")
            )
    return found


def check_schedule(context: Context) -> list[Finding]:
    """A cron entry or an enabled systemd timer runs popbs sync."""
    found = schedule.find(context.places)
    if found.runs:
        return []
    findings = [Finding(f"ignored: {problem}", fix) for problem, fix in found.ignored]
    if found.disabled_timer:
        findings.append(
            Finding(
                f"{found.disabled_timer} is installed but not enabled",
                "systemctl enable --now popbs.timer",
            )
        )
    else:
        findings.append(
            Finding(
                "nothing runs popbs sync: no cron entry and no enabled popbs.timer",
                "install -m 644 cron/popbs /etc/cron.d/popbs (or enable the "
                "systemd timer: systemctl enable --now popbs.timer)",
            )
        )
    return findings


CHECKS: tuple[tuple[str, Check], ...] = (
    ("postmap and map type", check_postmap),
    ("main.cf restrictions", check_main_cf),
    ("master.cf overrides", check_master_cf),
    ("map and state permissions", check_permissions),
    ("logs", check_logs),
    ("schedule", check_schedule),
)


Results = list[tuple[str, list[Finding]]]


# Checks of Postfix's own set-up: with another MTA (--mta) they do not apply.
POSTFIX_ONLY = {check_postmap, check_main_cf, check_master_cf}


def run(context: Context) -> Results:
    postfix_mta = context.settings.mta == "postfix"
    return [
        (name, check(context))
        for name, check in CHECKS
        if postfix_mta or check not in POSTFIX_ONLY
    ]


def text_lines(results: Results) -> list[str]:
    """`ok` for a check that found nothing; each problem with its fix below."""
    lines = []
    for name, findings in results:
        if not findings:
            lines.append(f"ok       {name}")
        for finding in findings:
            lines.append(f"problem  {finding.problem}")
            lines.append(f"  fix    {finding.fix}")
    count = sum(len(findings) for _, findings in results)
    if count:
        lines.append(f"{count} problem{'s' if count > 1 else ''} found")
    return lines


def as_json(results: Results) -> dict[str, object]:
    checks = [
        {"check": name, "ok": not findings, "findings": [asdict(f) for f in findings]}
        for name, findings in results
    ]
    return {"ok": all(check["ok"] for check in checks), "checks": checks}


def context(settings: Settings, places: schedule.Places) -> Context:
    conf: Postconf | None = None
    if settings.mta == "postfix":
        with contextlib.suppress(PostconfError):
            conf = Postconf()
    return Context(settings, places, conf)


def _wanted(settings: Settings) -> str | None:
    """The table main.cf should name; None when the map type is unknown."""
    try:
        map_type = settings.map_type
    except PopbsError:
        return None  # check_postmap says why
    return restrictions.table(map_type, str(settings.map_path))


def _classes(conf: Postconf) -> dict[str, list[str]]:
    names = restrictions.tokens(conf.value("smtpd_restriction_classes"))
    return {name: restrictions.tokens(conf.value(name)) for name in names}


def _restriction_lists(
    conf: Postconf, lookup: Callable[[str], str]
) -> list[tuple[str, tuple[str, ...]]]:
    """The lists that decide relaying, each with what refuses relay in it.

    From Postfix 2.10, smtpd_relay_restrictions decides relaying first, but a
    reject_unauth_destination in smtpd_recipient_restrictions still refuses
    afterwards; before 2.10, or with an empty relay list, only the recipient
    list decides.
    """
    final = restrictions.UNAUTH + restrictions.FINAL
    if conf.version() < (2, 10) or not lookup(RELAY).strip():
        return [(RECIPIENT, final)]
    lists: list[tuple[str, tuple[str, ...]]] = [(RELAY, final)]
    recipient = restrictions.tokens(lookup(RECIPIENT))
    if any(item in restrictions.UNAUTH for item in recipient):
        lists.append((RECIPIENT, restrictions.UNAUTH))
    return lists


def _map_file(path: Path, owner: str) -> list[Finding]:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return [Finding(f"{path} does not exist", "run: popbs publish")]
    except OSError as error:
        return [Finding(f"cannot look at {path}: {error.strerror}", "check its path")]
    found = []
    unsafe = fsutil.unsafe(path)
    if unsafe:
        fix = (
            f"replace the link {path} by root's own file"
            if "link" in unsafe
            else f"chmod o-w {path.parent}"
        )
        found.append(Finding(f"{path}: {unsafe}", fix))
    if info.st_uid not in (0, os.geteuid()):
        found.append(
            Finding(
                f"{path} is owned by uid {info.st_uid}, who can grant relay to anyone",
                f"chown root {path}",
            )
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        found.append(
            Finding(
                f"{path} is writable by others, who can grant relay to anyone",
                f"chmod go-w {path}",
            )
        )
    blocked = _unreadable_by(owner, path)
    if blocked:
        found.append(
            Finding(
                f"the Postfix user {owner} cannot read {path}: {blocked}",
                f"chmod 644 {path} and chmod a+x on the directories above it",
            )
        )
    return found


def _state_dir(path: Path) -> list[Finding]:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return [
            Finding(
                f"state directory {path} does not exist: popbs sync has not run",
                "run: popbs sync (the cron job does, every minute)",
            )
        ]
    except OSError as error:
        return [Finding(f"cannot look at {path}: {error.strerror}", "check its path")]
    if not stat.S_ISDIR(info.st_mode):
        return [Finding(f"state directory {path} is not a directory", f"rm {path}")]
    found = []
    me = os.geteuid()
    if info.st_uid != me:
        found.append(
            Finding(
                f"state directory {path} is owned by uid {info.st_uid}, not by "
                f"this user (uid {me})",
                f"chown {me} {path}, or run doctor as the user that runs sync",
            )
        )
    if info.st_mode & 0o077:
        found.append(
            Finding(
                f"state directory {path} has mode {info.st_mode & 0o7777:04o}; "
                "others may read or tamper with the offsets",
                f"chmod 700 {path}",
            )
        )
    return found


def _unreadable_by(user: str, path: Path) -> str | None:
    """Why `user` cannot read `path`, judged by the modes; None if it can."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return f"no such user {user}"
    if entry.pw_uid == 0:
        return None
    groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def allowed(target: Path, bit: int) -> bool:
        info = os.stat(target)
        if info.st_uid == entry.pw_uid:
            return bool(info.st_mode & (bit << 6))
        if info.st_gid in groups:
            return bool(info.st_mode & (bit << 3))
        return bool(info.st_mode & bit)

    absolute = path.absolute()
    for directory in reversed(absolute.parents):
        if not allowed(directory, 1):
            return f"it cannot enter {directory}"
    if not allowed(absolute, 4):
        return "the file's mode does not let it"
    return None
