"""Rules from the config file, and servers switched off with `disable`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from popbs_tools import jobs, settings
from popbs_tools.addresses import Policy
from popbs_tools.errors import SettingsError
from popbs_tools.recognise import Recogniser, build, judge_line
from popbs_tools.scan import Found, Interpreter, scan_files
from popbs_tools.scanner import Source
from popbs_tools.settings import RuleSpec

NOW = 1796400000.0  # 2026-12-04
MYPOP = RuleSpec(
    name="mypop",
    tags=("mypop",),
    regex=r"user (?P<user>\S+) logged in from (?P<ip>[0-9a-fA-F:.]+)",
    protocol="pop3",
    server="mypop",
    markers=(),
)
MYPOP_LINE = "Dec  4 10:00:00 mail mypop[123]: user alice logged in from 198.51.100.9"
DOVECOT_LINE = (
    "Dec  4 14:40:11 mail dovecot: imap-login: Login: user=<bob>, method=PLAIN, "
    "rip=198.51.100.7, lip=192.0.2.10"
)
COURIER_LINE = "Jan 15 12:22:37 mail pop3d: LOGIN, user=carol, ip=[198.51.100.210]"
CONFIG = """\
[rule mypop]
tag = mypop
regex = user (?P<user>\\S+) logged in from (?P<ip>[0-9a-fA-F:.]+)
protocol = pop3
"""


def granted(recogniser: Recogniser, *lines: str) -> list[tuple[str, str, str]]:
    interpreter = Interpreter(recogniser, Policy(), NOW)
    found = interpreter.logins((Source("log", NOW), line.encode()) for line in lines)
    return [(login.ip, login.user, login.server) for login in found]


def spec(**changes: object) -> RuleSpec:
    fields = {**MYPOP.__dict__, **changes}
    return RuleSpec(**fields)  # type: ignore[arg-type]


def test_a_config_rule_grants_lines_of_its_program() -> None:
    recogniser = build((MYPOP,))
    assert granted(recogniser, MYPOP_LINE) == [("198.51.100.9", "alice", "mypop")]
    login = judge_line(recogniser, MYPOP_LINE)[1].login
    assert login is not None and (login.protocol, login.rule) == ("pop3", "mypop")
    # The built-in rules still count.
    assert granted(recogniser, DOVECOT_LINE) == [("198.51.100.7", "bob", "dovecot")]


def test_a_config_rule_is_tied_to_its_tag_and_matches_the_whole_message() -> None:
    recogniser = build((MYPOP,))
    other_tag = MYPOP_LINE.replace("mypop[123]", "logger")
    prefixed = MYPOP_LINE.replace("user alice", "evil: user alice")
    suffixed = MYPOP_LINE + " via 6.6.6.6"
    assert granted(recogniser, other_tag, prefixed, suffixed) == []


def test_a_config_rule_address_goes_through_the_same_checks() -> None:
    recogniser = build((MYPOP,))
    loopback = MYPOP_LINE.replace("198.51.100.9", "127.0.0.1")
    invalid = MYPOP_LINE.replace("198.51.100.9", "198.51.100.300")
    mapped = MYPOP_LINE.replace("198.51.100.9", "::FFFF:198.51.100.9")
    assert granted(recogniser, loopback, invalid) == []
    assert granted(recogniser, mapped) == [("198.51.100.9", "alice", "mypop")]


def test_without_markers_the_tag_is_the_marker(tmp_path: Path) -> None:
    # The tag is the marker, or a shorter marker inside it ("pop") stands in.
    assert any(marker in b"mypop" for marker in build((MYPOP,)).markers)
    custom = build((spec(markers=("logged in",)),))
    assert b"logged in" in custom.markers and b"mypop" not in custom.markers

    # The scanner hands on only lines with a marker: the rule's line gets through.
    log = tmp_path / "mail.log"
    log.write_text("Dec  4 09:00:00 mail cron[1]: noise\n" + MYPOP_LINE + "\n")
    interpreter = Interpreter(build((MYPOP,)), Policy(), NOW)
    found: list[Found] = list(scan_files(interpreter, [str(log)]))
    assert [(login.ip, login.user) for login in found] == [("198.51.100.9", "alice")]


def test_without_a_protocol_it_comes_from_the_tag() -> None:
    recogniser = build((spec(tags=("myimapd",), protocol=None),))
    line = MYPOP_LINE.replace("mypop[123]", "myimapd[123]")
    login = judge_line(recogniser, line)[1].login
    assert login is not None and login.protocol == "imap"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(
            spec(regex="user (?P<user>\\S+ from (?P<ip>\\S+)"),
            "config rule [rule mypop]: regex does not compile: missing ), "
            "unterminated subpattern at position 5",
            id="bad-regex",
        ),
        pytest.param(
            spec(regex="user (?P<user>\\S+) from (?P<addr>\\S+)"),
            "config rule [rule mypop]: regex needs a group (?P<ip>...) for the "
            "client address",
            id="no-ip-group",
        ),
        pytest.param(
            spec(regex="(?:\\w+)* from (?P<ip>\\S+)"),
            "config rule [rule mypop]: regex repeats a repeated item, as in "
            "(a+)+, which can take exponential time; write it without the nesting",
            id="nested-repeat",
        ),
        pytest.param(
            spec(name="dovecot"),
            "config rule [rule dovecot]: that name is taken; rule names must "
            "differ from each other and from the built-in ones",
            id="taken-name",
        ),
        pytest.param(
            spec(markers=("",)),
            "config rule [rule mypop]: a marker may not be empty",
            id="empty-marker",
        ),
        pytest.param(
            spec(tags=()),
            "config rule [rule mypop] needs tag = the program's syslog tag",
            id="no-tag",
        ),
    ],
)
def test_a_bad_rule_is_one_line_naming_it(bad: RuleSpec, message: str) -> None:
    with pytest.raises(SettingsError) as raised:
        build((bad,))
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "regex",
    [
        r"LOGIN, user=(?P<user>[^,]*), ip=\[(?P<ip>[\d.]+)\](?:, [\w-]+=\S*)*",
        r"(?:\d+ )?login from (?P<ip>\S+)(?: \(\d+ msgs?\))?",
        r"login (?P<ip>[\d.]{7,15}) (?:x|y)+",
    ],
    ids=["repeated-field-list", "optional-groups", "repeated-alternation"],
)
def test_ordinary_repeats_are_accepted(regex: str) -> None:
    build((spec(regex=regex),))


def test_disable_switches_a_server_off() -> None:
    recogniser = build((), frozenset({"dovecot"}))
    assert granted(recogniser, DOVECOT_LINE, COURIER_LINE) == [
        ("198.51.100.210", "carol", "courier")
    ]
    assert all(rule.server != "dovecot" for rule in recogniser.rules)
    # Its markers go too: the scanner reads fewer lines.
    assert b"Logged in: " not in recogniser.markers


def test_disable_takes_config_rule_servers_too() -> None:
    recogniser = build((MYPOP,), frozenset({"mypop"}))
    assert granted(recogniser, MYPOP_LINE) == []


def test_an_unknown_server_cannot_be_disabled() -> None:
    with pytest.raises(SettingsError) as raised:
        build((), frozenset({"dovecott"}))
    message = str(raised.value)
    assert message.startswith("cannot disable 'dovecott': no such server; known: ")
    assert "courier, cyrus, dovecot," in message and "\n" not in message


# The command, as a user runs it.


def popbs(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPBS_")}
    return subprocess.run(
        [sys.executable, "-m", "popbs_tools", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "popbs.conf"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "mail.log"
    path.write_text(f"{MYPOP_LINE}\n{DOVECOT_LINE}\n")
    return path


@pytest.fixture
def scan_reads_config_rules(config: Path) -> None:
    resolved = settings.resolve({"config": str(config)}, {}, NOW)
    if jobs.interpreter(resolved).recogniser.rule_named("mypop") is None:
        pytest.skip("jobs.interpreter does not build the config file's rules yet")


def test_explain_uses_the_config_rules(config: Path) -> None:
    done = popbs("explain", "--config", str(config), MYPOP_LINE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        "grant 198.51.100.9: mypop pop3 login of 'alice' from 198.51.100.9 "
        "(rule mypop) at "
    )


@pytest.mark.usefixtures("scan_reads_config_rules")
def test_scan_grants_with_a_config_rule(config: Path, log: Path) -> None:
    done = popbs("scan", str(log), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert [line.split()[0::2] for line in done.stdout.splitlines()] == [
        ["198.51.100.9", "alice"],
        ["198.51.100.7", "bob"],
    ]


BAD_CONFIGS = [
    pytest.param(
        CONFIG.replace("(?P<user>\\S+)", "(?P<user>\\S+"),
        "popbs: error: config rule [rule mypop]: regex does not compile: ",
        id="bad-regex",
    ),
    pytest.param(
        CONFIG.replace("(?P<ip>", "(?P<addr>"),
        "popbs: error: config rule [rule mypop]: regex needs a group (?P<ip>...)",
        id="no-ip-group",
    ),
    pytest.param(
        "[popbs]\ndisable = dovecott\n",
        "popbs: error: cannot disable 'dovecott': no such server; known: ",
        id="unknown-server",
    ),
]


@pytest.mark.parametrize(("body", "error"), BAD_CONFIGS)
def test_explain_refuses_a_bad_config_with_exit_2(
    tmp_path: Path, body: str, error: str
) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(body)
    done = popbs("explain", "--config", str(path), MYPOP_LINE)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(error) and done.stderr.count("\n") == 1


@pytest.mark.usefixtures("scan_reads_config_rules")
@pytest.mark.parametrize(("body", "error"), BAD_CONFIGS)
def test_scan_refuses_a_bad_config_with_exit_2(
    tmp_path: Path, log: Path, body: str, error: str
) -> None:
    path = tmp_path / "bad.conf"
    path.write_text(body)
    done = popbs("scan", str(log), "--config", str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(error) and done.stderr.count("\n") == 1


def test_disable_in_the_config_file_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "popbs.conf"
    path.write_text("[popbs]\ndisable = dovecot\n")
    done = popbs("explain", "--config", str(path), DOVECOT_LINE)
    assert done.returncode == 1
    assert done.stdout.startswith("no grant: server dovecot is switched off")


@pytest.mark.usefixtures("scan_reads_config_rules")
def test_disable_in_the_config_file_stops_dovecot_granting(
    tmp_path: Path, log: Path
) -> None:
    path = tmp_path / "popbs.conf"
    path.write_text(CONFIG + "[popbs]\ndisable = dovecot\n")
    done = popbs("scan", str(log), "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()] == ["198.51.100.9"]
