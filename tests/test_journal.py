"""The systemd journal: trusted fields decide, the cursor is the position."""

from pathlib import Path

import journals
import pytest
from journals import DOVECOT_SERVICE, JournalFile, dovecot_message

from popbs_tools import journal

pytestmark = pytest.mark.skipif(
    not journals.available(), reason="systemd-journal-remote or journalctl missing"
)

WHEN = 1796395211.0


def test_server_entries_are_read_with_their_own_time(tmp_path: Path) -> None:
    file = JournalFile(tmp_path / "a.journal")
    file.add(WHEN, dovecot_message("198.51.100.7"), **DOVECOT_SERVICE)
    entries = list(journal.read((file.path,), None, since=0))
    assert len(entries) == 1
    record = entries[0].record
    assert record is not None
    assert (record.tag, record.pid) == ("dovecot", "1327")
    assert record.message.startswith("imap-login: Login: user=<alice>")
    assert record.stamp is not None and record.stamp.timestamp() == WHEN  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "fields",
    [
        {"_COMM": "logger", "_UID": "1000", "_SYSTEMD_UNIT": "session-3.scope"},
        {"_COMM": "logger", "_UID": "0"},
        {"_COMM": "dovecot", "_UID": "1000", "_SYSTEMD_UNIT": "user@1000.service"},
        {"_UID": "0"},
    ],
    ids=["user-logger", "root-logger", "user-binary-named-dovecot", "no-comm"],
)
def test_imitations_are_not_trusted(tmp_path: Path, fields: dict[str, str]) -> None:
    file = JournalFile(tmp_path / "a.journal")
    file.add(
        WHEN, dovecot_message("203.0.113.66"), SYSLOG_IDENTIFIER="dovecot", **fields
    )
    [entry] = journal.read((file.path,), None, since=0)
    assert entry.record is None
    assert entry.refusal


def test_inetd_server_run_as_system_user_is_trusted() -> None:
    fields = {"_COMM": "in.qpopper", "_UID": "0", "_SYSTEMD_UNIT": "inetd.service"}
    assert journal.trust(fields) == ""


@pytest.mark.parametrize(
    "fields",
    [
        # Any process may name itself: the unit is what counts.
        {"_COMM": "imap", "_UID": "33", "_SYSTEMD_UNIT": "apache2.service"},
        {"_COMM": "in.qpopper", "_UID": "0", "_SYSTEMD_UNIT": "session-1.scope"},
        # Under a super-server, only a server's process of a system user.
        {"_COMM": "bash", "_UID": "1000", "_SYSTEMD_UNIT": "inetd.service"},
        {"_COMM": "in.qpopper", "_UID": "1000", "_SYSTEMD_UNIT": "xinetd.service"},
    ],
    ids=["web-server-named-imap", "no-server-unit", "inetd-shell", "inetd-user"],
)
def test_process_names_alone_are_not_trusted(fields: dict[str, str]) -> None:
    assert journal.trust(fields) != ""


def test_cursor_resumes_after_the_last_entry(tmp_path: Path) -> None:
    file = JournalFile(tmp_path / "a.journal")
    file.add(WHEN, dovecot_message("198.51.100.7"), **DOVECOT_SERVICE)
    [first] = journal.read((file.path,), None, since=0)

    file.add(WHEN + 60, dovecot_message("198.51.100.8"), **DOVECOT_SERVICE)
    entries = list(journal.read((file.path,), first.cursor, since=0))
    assert [e.record.message.split("rip=")[1][:12] for e in entries if e.record] == [
        "198.51.100.8"
    ]
    assert list(journal.read((file.path,), entries[-1].cursor, since=0)) == []


def test_first_run_reads_only_since_the_given_time(tmp_path: Path) -> None:
    file = JournalFile(tmp_path / "a.journal")
    file.add(WHEN - 7200, dovecot_message("198.51.100.7"), **DOVECOT_SERVICE)
    file.add(WHEN, dovecot_message("198.51.100.8"), **DOVECOT_SERVICE)
    entries = list(journal.read((file.path,), None, since=WHEN - 1800))
    assert len(entries) == 1


def test_unreadable_journal_is_an_input_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.journal"
    bogus.write_bytes(b"not a journal")
    with pytest.raises(Exception) as caught:
        list(journal.read((bogus,), None, since=0))
    assert type(caught.value).__name__ == "InputError"


def test_sync_reads_the_journal_from_its_cursor(tmp_path: Path) -> None:
    from helpers import POSTMAP, Setup

    if POSTMAP is None:
        pytest.skip("Postfix's postmap missing")
    setup = Setup(tmp_path)
    file = JournalFile(tmp_path / "mail.journal")
    file.add(WHEN, dovecot_message("198.51.100.7"), **DOVECOT_SERVICE)
    file.add(
        WHEN + 1,
        dovecot_message("203.0.113.66", user="x"),
        SYSLOG_IDENTIFIER="dovecot",
        _COMM="logger",
        _UID="1000",
    )
    args = ("--journal-file", str(file.path), "--now", str(WHEN + 60))

    scan = setup.popbs("scan", *args, check=True)
    assert [line.split()[0] for line in scan.stdout.splitlines()] == ["198.51.100.7"]
    assert setup.popbs("scan", *args, check=True).stdout == ""

    file.add(WHEN + 30, dovecot_message("198.51.100.8", user="bob"), **DOVECOT_SERVICE)
    setup.popbs("sync", *args, check=True)
    assert setup.query("198.51.100.8") == str(int(WHEN + 30))
    assert setup.query("198.51.100.7") is None  # scan had consumed it
    assert setup.query("203.0.113.66") is None
    cursors = (setup.state_dir / "state.json").read_text()
    assert '"cursors"' in cursors and "s=" in cursors
