"""--mta sendmail, exim and qmail, checked by each MTA's own tools.

makemap and Exim come from Debian packages unpacked with dpkg -x into
$POPBS_MTA_TOOLS (scripts/install-system-packages.sh): they cannot be
installed beside Postfix. tcprules comes from ucspi-tcp-ipv6, installed;
the original ucspi-tcp, unpacked, shows what happens without IPv6.
"""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from popbs_tools import mtaforms

from helpers import Setup, dovecot_line

TOOLS = Path(os.environ.get("POPBS_MTA_TOOLS", "/opt/popbs-mta-tools"))
MAKEMAP_DIR = TOOLS / "sendmail/usr/sbin"
SENDMAIL = TOOLS / "sendmail/usr/libexec/sendmail/sendmail"
EXIM = TOOLS / "exim/usr/sbin/exim4"
PLAIN_TCPRULES_DIR = TOOLS / "ucspi-tcp/usr/bin"
TCPRULES = shutil.which("tcprules")
TCPRULESCHECK = shutil.which("tcprulescheck")
UNSHARE = shutil.which("unshare")

NOW = "2026-12-04T15:00:00"
LATER = "2026-12-04T16:00:00"  # past the 30m TTL of a login at 14:40
GRANTED = ("198.51.100.7", "2001:db8::7")
# Near misses: a table that matched these would relay for strangers.
NOT_GRANTED = ("198.51.100.8", "198.51.100.70", "2001:db8::8", "2001:db8::70")


def _require(*paths: Path | str | None) -> None:
    missing = [str(path) for path in paths if not path or not Path(path).exists()]
    if missing:
        reason = f"MTA tools missing: {', '.join(missing)}; run make system-packages"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class MtaSetup(Setup):
    mta: str = "sendmail"
    path_first: str = ""

    def env(self) -> dict[str, str]:
        env = super().env()
        # No Postfix configuration at all: a run of postconf would fail.
        env["MAIL_CONFIG"] = str(self.root / "no-such-postfix")
        path = [str(MAKEMAP_DIR), os.environ.get("PATH", "")]
        env["PATH"] = os.pathsep.join(
            ([self.path_first] if self.path_first else []) + path
        )
        return env

    def settings(self) -> list[str]:
        args = ["--map", str(self.map), "--state-dir", str(self.state_dir)]
        args += ["--mta", self.mta]
        for log in self.logs:
            args += ["--log", str(log)]
        return args

    def grant_by_login(self) -> None:
        self.append(*(dovecot_line(ip) for ip in GRANTED))
        self.popbs("sync", "--now", NOW, check=True)


def _sendmail_lookup(access: Path, keys: list[str]) -> list[str]:
    """Look keys up in the access map through Sendmail's own map code (-bt)."""
    cf = access.with_name("sendmail.cf")
    cf.write_text(
        "V10/Berkeley\n"
        "O DontBlameSendmail=MapInUnsafeDirPath\n"
        f"O QueueDirectory={access.parent}\n"
        f"Kaccess hash -T<TMPF> {access}\n"
    )
    commands = "".join(f"/map access {key}\n" for key in keys)
    # Sendmail sleeps a minute when its host name has no domain: a host name
    # of its own, in a UTS namespace, leaves the machine's alone.
    assert UNSHARE is not None
    done = subprocess.run(
        [UNSHARE, "--uts", "sh", "-c", 'hostname mail.localdomain; exec "$@"', "-"]
        + [str(SENDMAIL), "-C", str(cf), "-bt"],
        input=commands,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [line for line in done.stdout.splitlines() if "map_lookup" in line]


def _exim_relay(lsearch: Path, client: str) -> str:
    """The answer to RCPT TO for a remote domain, in Exim's -bh SMTP session."""
    config = lsearch.with_name("exim.conf")
    # Exim runs as its own user, who cannot enter pytest's 0700 tmp folders:
    # as root here, it reads the table as a Debian-exim would in /etc/exim4.
    config.write_text(
        "exim_user = root\nexim_group = root\n"
        "primary_hostname = mail.example.test\n"
        "domainlist local_domains = example.test\n"
        "acl_smtp_rcpt = check_rcpt\n"
        f"log_file_path = {lsearch.parent}/exim-%s.log\n"
        f"spool_directory = {lsearch.parent}/exim-spool\n"
        "begin acl\n"
        "check_rcpt:\n"
        f"  accept hosts = net-lsearch;{lsearch}\n"
        "  accept domains = +local_domains\n"
        "  deny message = relaying denied\n"
    )
    dialogue = "HELO client.test\r\nMAIL FROM:<a@client.test>\r\n"
    dialogue += "RCPT TO:<b@elsewhere.test>\r\nQUIT\r\n"
    done = subprocess.run(
        [str(EXIM), "-C", str(config), "-bh", client],
        input=dialogue,
        capture_output=True,
        text=True,
        timeout=60,
    )
    replies = [line for line in done.stdout.splitlines() if line[:3] in ("250", "550")]
    return replies[-1]


def _tcprulescheck(cdb: Path, client: str) -> str:
    assert TCPRULESCHECK is not None
    done = subprocess.run(
        [TCPRULESCHECK, str(cdb)],
        env={"TCPREMOTEIP": client, "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# The forms, from each MTA's documentation.


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("198.51.100.7", "Connect:198.51.100.7"),
        ("2001:db8::7", "Connect:IPv6:2001:db8:0:0:0:0:0:7"),
        ("2001:db8:0:1:ffff:0:0:a", "Connect:IPv6:2001:db8:0:1:ffff:0:0:a"),
    ],
    ids=["ipv4", "ipv6-full-form", "ipv6-no-leading-zeros"],
)
def test_sendmail_key(key: str, expected: str) -> None:
    assert mtaforms.sendmail_key(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        ("2001:db8::7", "2001.0db8.0000.0000.0000.0000.0000.0007"),
    ],
    ids=["ipv4", "ipv6-dotted"],
)
def test_exim_key(key: str, expected: str) -> None:
    assert mtaforms.exim_key(key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("198.51.100.7", ["198.51.100.7"]),
        ("2001:db8::7", ["2001:db8::7"]),
        ("2001:db8:0:1:1:1:1:1", ["2001:db8::1:1:1:1:1", "2001:db8:0:1:1:1:1:1"]),
        ("1:0:0:2:3:0:0:4", ["1::2:3:0:0:4"]),
        ("2001:db8:1:2:3:4:5:0", ["2001:db8:1:2:3:4:5:0"]),
        ("2001:db8::", []),
    ],
    ids=[
        "ipv4",
        "ipv6",
        "single-zero-group-both-forms",
        "first-of-equal-runs",
        "ending-colon-form-left-out",
        "would-key-a-network",
    ],
)
def test_qmail_keys(key: str, expected: list[str]) -> None:
    assert mtaforms.qmail_keys(key) == expected


# Sendmail: makemap hash, looked up by makemap -u and by sendmail itself.


def test_sendmail_access_db_relays_granted_clients_only(tmp_path: Path) -> None:
    _require(MAKEMAP_DIR / "makemap", SENDMAIL, UNSHARE)
    setup = MtaSetup(tmp_path, mta="sendmail")
    setup.grant_by_login()

    access = setup.map.with_name("popbs.access")
    db = setup.map.with_name("popbs.access.db")
    assert "198.51.100.7 " in setup.map.read_text()
    assert "Connect:IPv6:2001:db8:0:0:0:0:0:7\tRELAY\n" in access.read_text()
    assert oct(db.stat().st_mode & 0o777) == "0o644"

    dump = subprocess.run(
        [str(MAKEMAP_DIR / "makemap"), "-C", os.devnull, "-u", "hash", str(access)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert sorted(dump.splitlines()) == [
        "connect:198.51.100.7\tRELAY",
        "connect:ipv6:2001:db8:0:0:0:0:0:7\tRELAY",
    ]

    keys = [mtaforms.sendmail_key(ip) for ip in GRANTED + NOT_GRANTED]
    answers = _sendmail_lookup(access, keys)
    assert len(answers) == len(keys)
    assert all("returns RELAY" in line for line in answers[: len(GRANTED)])
    assert all("no match" in line for line in answers[len(GRANTED) :])


# Exim: a net-lsearch host list in a real ACL, in a -bh SMTP session.


def test_exim_acl_relays_granted_clients_only(tmp_path: Path) -> None:
    _require(EXIM)
    setup = MtaSetup(tmp_path, mta="exim")
    setup.grant_by_login()

    lsearch = setup.map.with_name("popbs.lsearch")
    assert "2001.0db8.0000.0000.0000.0000.0000.0007: " in lsearch.read_text()
    for client in GRANTED:
        assert _exim_relay(lsearch, client) == "250 Accepted", client
    for client in NOT_GRANTED:
        assert _exim_relay(lsearch, client) == "550 relaying denied", client


# qmail: tcprules' cdb, looked up by tcprulescheck as tcpserver would.


def test_qmail_cdb_relays_granted_clients_only(tmp_path: Path) -> None:
    _require(TCPRULES, TCPRULESCHECK)
    setup = MtaSetup(tmp_path, mta="qmail")
    setup.grant_by_login()

    cdb = setup.map.with_name("popbs.cdb")
    assert oct(cdb.stat().st_mode & 0o777) == "0o644"
    for client in GRANTED:
        assert "RELAYCLIENT=" in _tcprulescheck(cdb, client), client
    for client in (*NOT_GRANTED, "2001:db8::7:1"):
        assert "RELAYCLIENT" not in _tcprulescheck(cdb, client), client


def test_qmail_without_ipv6_tcprules_keeps_the_ipv4_grants(tmp_path: Path) -> None:
    _require(PLAIN_TCPRULES_DIR / "tcprules", TCPRULESCHECK)
    setup = MtaSetup(tmp_path, mta="qmail", path_first=str(PLAIN_TCPRULES_DIR))
    setup.append(*(dovecot_line(ip) for ip in GRANTED))
    done = setup.popbs("sync", "--now", NOW, check=True)

    assert "cannot parse IPv6 rules (install ucspi-tcp-ipv6)" in done.stderr
    rules = setup.map.with_name("popbs.tcprules").read_text()
    assert '198.51.100.7:allow,RELAYCLIENT=""' in rules
    assert "2001:db8" not in rules
    # The grant file keeps the IPv6 grant: list and check still report it.
    assert "2001:db8::7 " in setup.map.read_text()
    assert "RELAYCLIENT=" in _tcprulescheck(
        setup.map.with_name("popbs.cdb"), GRANTED[0]
    )


# Every MTA: the other commands, publishing only on change, atomic replacement.

TABLES = {
    "sendmail": "popbs.access.db",
    "exim": "popbs.lsearch",
    "qmail": "popbs.cdb",
}


@pytest.fixture(params=sorted(TABLES))
def mta_setup(request: pytest.FixtureRequest, tmp_path: Path) -> MtaSetup:
    needs = {
        "sendmail": MAKEMAP_DIR / "makemap",
        "exim": EXIM,
        "qmail": TCPRULES,
    }
    _require(needs[request.param])
    return MtaSetup(tmp_path, mta=request.param)


def test_commands_work_without_postfix(mta_setup: MtaSetup) -> None:
    setup = mta_setup
    table = setup.map.with_name(TABLES[setup.mta])
    setup.popbs("publish", "--now", NOW, check=True)
    assert table.exists() and setup.map.exists()

    setup.popbs("merge", "--now", NOW, stdin="198.51.100.9\n", check=True)
    setup.popbs("publish", "--now", NOW, check=True)
    listed = setup.popbs("list", "--now", NOW, check=True).stdout
    assert listed.startswith("198.51.100.9 ")
    assert setup.popbs("check", "198.51.100.9", "--now", NOW).returncode == 0
    assert setup.popbs("check", "198.51.100.10", "--now", NOW).returncode == 1
    assert b"198.51.100.9" in table.read_bytes()
    # The table's name alone, and no temp file, beside the grant file.
    names = {path.name for path in setup.map_dir.iterdir()}
    assert not [name for name in names if name.startswith(".")]


def test_unchanged_run_leaves_the_table_alone(mta_setup: MtaSetup) -> None:
    setup = mta_setup
    setup.grant_by_login()
    table = setup.map.with_name(TABLES[setup.mta])
    before = table.stat()

    setup.popbs("sync", "--now", "2026-12-04T15:01:00", check=True)
    assert table.stat().st_ino == before.st_ino
    assert table.stat().st_mtime_ns == before.st_mtime_ns


def test_table_is_replaced_by_rename_and_pruned(mta_setup: MtaSetup) -> None:
    setup = mta_setup
    setup.grant_by_login()
    table = setup.map.with_name(TABLES[setup.mta])

    # A reader that opened the old table keeps a complete old table.
    with open(table, "rb") as old:
        old_bytes = old.read()
        old_inode = os.fstat(old.fileno()).st_ino
        setup.popbs("sync", "--now", LATER, check=True)
        old.seek(0)
        assert old.read() == old_bytes
    assert table.stat().st_ino != old_inode
    assert b"198.51.100.7" in old_bytes
    assert b"198.51.100.7" not in table.read_bytes()
    assert setup.popbs("check", "198.51.100.7", "--now", LATER).returncode == 1


@pytest.mark.parametrize("mta", ["sendmail", "qmail"])
def test_missing_tool_keeps_the_old_table(tmp_path: Path, mta: str) -> None:
    _require(MAKEMAP_DIR / "makemap" if mta == "sendmail" else TCPRULES)
    setup = MtaSetup(tmp_path, mta=mta)
    setup.grant_by_login()
    table = setup.map.with_name(TABLES[setup.mta])
    before = (table.read_bytes(), setup.map.read_bytes())

    # A PATH without makemap or tcprules (nor are they in the sbin folders
    # popbs adds to it).
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools", "publish", *setup.settings()],
        capture_output=True,
        text=True,
        env={**setup.env(), "PATH": "/nonexistent"},
        timeout=120,
    )
    assert done.returncode == 4, done.stderr
    assert "not found in PATH" in done.stderr
    assert (table.read_bytes(), setup.map.read_bytes()) == before
    assert not [p for p in setup.map_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("option", "exim", 0),
        ("env", "qmail", 0),
        ("config", "sendmail", 0),
        ("env", "smail", 2),
        ("option", "smail", 2),
    ],
    ids=["option", "env", "config", "bad-env", "bad-option"],
)
def test_mta_setting_sources(
    tmp_path: Path, source: str, value: str, expected: int
) -> None:
    setup = MtaSetup(tmp_path)
    args = ["--map", str(setup.map), "--state-dir", str(setup.state_dir)]
    env = setup.env()
    if source == "option":
        args += ["--mta", value]
    elif source == "env":
        env["POPBS_MTA"] = value
    else:
        config = tmp_path / "popbs.conf"
        config.write_text(f"[popbs]\nmta = {value}\n")
        args += ["--config", str(config)]
    done = subprocess.run(
        [sys.executable, "-m", "popbs_tools", "publish", *args, "--now", NOW],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == expected, done.stderr
    if expected == 0:
        assert setup.map.with_name(TABLES[value]).exists()
    else:
        assert "smail" in done.stderr


# MAP.local: the admin's own lines, in the one table Sendmail or tcpserver reads.


def test_sendmail_local_lines_come_first_and_win(tmp_path: Path) -> None:
    _require(MAKEMAP_DIR / "makemap", SENDMAIL, UNSHARE)
    setup = MtaSetup(tmp_path, mta="sendmail")
    setup.grant_by_login()
    access = setup.map.with_name("popbs.access")

    # An edited MAP.local is published by the next run, though no grant changed.
    local = setup.map.with_name("popbs.local")
    local.write_text("Connect:192.0.2.1\tOK\nconnect:198.51.100.7\tREJECT")
    setup.popbs("sync", "--now", "2026-12-04T15:01:00", check=True)

    answers = _sendmail_lookup(
        access,
        [
            "Connect:192.0.2.1",
            "Connect:198.51.100.7",
            mtaforms.sendmail_key(GRANTED[1]),
        ],
    )
    assert "returns OK" in answers[0]
    # makemap refuses a duplicate key: the grant gives way to the admin's line.
    assert "returns REJECT" in answers[1]
    assert "returns RELAY" in answers[2]


def test_qmail_local_rules_come_first_and_win(tmp_path: Path) -> None:
    _require(TCPRULES, TCPRULESCHECK)
    setup = MtaSetup(tmp_path, mta="qmail")
    local = setup.map_dir / "popbs.local"
    local.write_text('127.:allow,RELAYCLIENT=""\n198.51.100.7:deny\n:allow\n')
    setup.grant_by_login()

    cdb = setup.map.with_name("popbs.cdb")
    assert "RELAYCLIENT=" in _tcprulescheck(cdb, "127.0.0.1")
    assert "deny connection" in _tcprulescheck(cdb, "198.51.100.7")
    assert "RELAYCLIENT=" in _tcprulescheck(cdb, "2001:db8::7")
    assert "RELAYCLIENT" not in _tcprulescheck(cdb, "192.0.2.1")


TEMPS = {
    "sendmail": [".popbs.access.abc123_x", ".popbs.access.abc123_x.db"],
    "exim": [".popbs.lsearch.abc123_x"],
    "qmail": [".popbs.tcprules.abc123_x", ".popbs.cdb.abc123_x"],
}


def test_temp_files_of_a_killed_run_are_removed(mta_setup: MtaSetup) -> None:
    setup = mta_setup
    old = [setup.map_dir / name for name in [".popbs.abc123_x", *TEMPS[setup.mta]]]
    young = setup.map_dir / ".popbs.young123"
    for path in (*old, young):
        path.write_bytes(b"")
    for path in old:
        os.utime(path, (1, 1))

    setup.popbs("publish", "--now", NOW, check=True)
    assert not [path.name for path in old if path.exists()]
    assert young.exists()


@pytest.mark.parametrize(
    "kind", ["other-owner", "group-writable", "symlink", "directory"]
)
def test_a_local_file_root_did_not_write_is_refused(tmp_path: Path, kind: str) -> None:
    """MAP.local goes first into the table: only root's own file may."""
    _require(TCPRULES)
    setup = MtaSetup(tmp_path, mta="qmail")
    setup.grant_by_login()
    before = setup.map.with_name("popbs.cdb").read_bytes()
    local = setup.map_dir / "popbs.local"
    if kind == "symlink":
        secret = tmp_path / "secret"
        secret.write_text(':allow,RELAYCLIENT=""\n')
        local.symlink_to(secret)
    elif kind == "directory":
        local.mkdir()
    else:
        local.write_text(':allow,RELAYCLIENT=""\n')
        if kind == "other-owner":
            os.chown(local, 65534, 65534)
        else:
            local.chmod(0o664)
    done = setup.popbs("sync", "--now", "2026-12-04T15:01:00")
    assert done.returncode == 4
    assert "refusing to use" in done.stderr or "Too many levels" in done.stderr, (
        done.stderr
    )
    assert setup.map.with_name("popbs.cdb").read_bytes() == before
