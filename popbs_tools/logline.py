"""Split a log line into its header (time, host, program tag, pid) and message.

Recognition rules are anchored on the program tag and the start of the message,
so this split decides what text a rule may trust: everything after the tag is
the program's own message, everything before it was written by the logger.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from popbs_tools import timestamps
from popbs_tools.lazyre import LazyPattern
from popbs_tools.timestamps import Stamp

_MON = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_YEARLESS = rf"{_MON} +(?P<day>\d{{1,2}}) (?P<hms>\d\d:\d\d:\d\d)(?:\.\d+)?"
_ISO = (
    r"(?P<iso>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?"
    r"(?:Z|[+-]\d\d(?::?\d\d)?)?)"
)
_CTIME = (
    rf"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) {_MON} +(?P<day>\d{{1,2}}) "
    r"(?P<hms>\d\d:\d\d:\d\d) (?P<year>\d{4})"
)

# RFC 5424 as rsyslog writes it to a file: <PRI>1 TIME HOST APP PROCID MSGID SD MSG
_RFC5424 = LazyPattern(
    r"(?:<\d{1,3}>)?1 (?P<iso>\S+) (?P<host>\S+) (?P<tag>\S+) (?P<pid>\S+) \S+ "
    r"(?P<rest>.*)",
    re.DOTALL,
)
_STAMPED = LazyPattern(rf"(?:{_YEARLESS}|{_ISO}) (?P<rest>.*)", re.DOTALL)
_CTIME_STAMPED = LazyPattern(rf"{_CTIME} \[(?P<pid>\d+)\] (?P<rest>.*)", re.DOTALL)
# Dovecot 0.99 and 1.x in their own log_path: "pop3-login: Dec 04 14:57:10 Info: ..."
_PREFIXED = LazyPattern(rf"(?P<tag>[\w.-]+): {_YEARLESS} (?P<rest>.*)", re.DOTALL)
# daemontools' multilog, where tcpserver -v logs go: "@" and a TAI64N label.
_TAI64N = LazyPattern(r"@(?P<tai>[0-9a-f]{24}) (?P<rest>.*)", re.DOTALL)
# log4j's layout in Zimbra's mailbox.log and audit.log: "2026-12-04
# 17:30:00,123 INFO  [thread] message". Such a file has no program tag: its
# records get the empty tag, which no syslog header can produce.
_LOG4J = LazyPattern(
    r"(?P<iso>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
    r"(?:TRACE|DEBUG|INFO|WARN|ERROR|FATAL) +\[[^\]]*\] (?P<rest>.*)",
    re.DOTALL,
)

_TAG = r"(?P<tag>[^\s\[\]:]+)(?:\[(?P<pid>\d+)\])?"
_WITH_HOST = LazyPattern(rf"(?P<host>\S*[^\s:]) {_TAG}: (?P<msg>.*)", re.DOTALL)
_SYSLOG = LazyPattern(
    rf"{_YEARLESS} (?P<host>\S*[^\s:]) {_TAG}: (?P<msg>.*)", re.DOTALL
)
_NO_HOST = LazyPattern(rf"{_TAG}: (?P<msg>.*)", re.DOTALL)
_BRACKET_TAG = LazyPattern(r"\[(?P<tag>[\w.-]+)\] (?P<msg>.*)", re.DOTALL)

# Solaris syslogd inserts "[ID 748625 mail.info] " before the message.
_SOLARIS_ID = LazyPattern(r"\[ID \d+ [\w.]+\] ")
# syslogd folds identical lines; what it wraps is the program's own message.
_REPEATED = LazyPattern(r"message repeated \d+ times: \[ ?(?P<msg>.*)\]", re.DOTALL)


@dataclass(frozen=True)
class Record:
    stamp: Stamp
    host: str
    tag: str
    pid: str
    message: str


def _tai64n(label: str) -> datetime:
    # libtai's labels run 10 s ahead of Unix time (TAI-UTC in 1970), and
    # daemontools counts no leap second since.
    seconds = int(label[:16], 16) - (1 << 62) - 10
    return datetime.fromtimestamp(seconds + int(label[16:], 16) / 1e9, tz=UTC)


def _stamp(match: re.Match[str]) -> Stamp:
    groups = match.groupdict()
    if groups.get("tai"):
        return _tai64n(groups["tai"])
    if groups.get("year"):
        return timestamps.parse_ctime(
            groups["mon"], groups["day"], groups["hms"], groups["year"]
        )
    if groups.get("iso"):
        return timestamps.parse_iso(groups["iso"])
    if groups.get("mon"):
        return timestamps.parse_yearless(groups["mon"], groups["day"], groups["hms"])
    return None


def _skip_structured_data(rest: str) -> str | None:
    """Return the MSG after RFC 5424 STRUCTURED-DATA, or None if malformed."""
    if rest.startswith("- ") or rest == "-":
        return rest[2:]
    position = 0
    while position < len(rest) and rest[position] == "[":
        position += 1
        while position < len(rest) and rest[position] != "]":
            # Inside a PARAM-VALUE, "\]" is an escaped bracket, not the end.
            position += 2 if rest[position] == "\\" else 1
        if position >= len(rest):
            return None
        position += 1
    if position == 0:
        return None
    return rest[position + 1 :] if rest[position : position + 1] == " " else ""


def finish(stamp: Stamp, host: str, tag: str, pid: str | None, msg: str) -> Record:
    msg = msg.removeprefix("\ufeff")
    # Either wrapper may come first: Solaris tags the folded line too.
    # (The startswith tests only spare the regexes on the usual line.)
    for _ in range(2):
        solaris = _SOLARIS_ID.match(msg) if msg.startswith("[ID ") else None
        if solaris:
            msg = msg[solaris.end() :]
        repeated = _REPEATED.fullmatch(msg) if msg.startswith("message ") else None
        if repeated:
            msg = repeated["msg"]
    return Record(stamp, host, tag, pid or "", msg)


def parse(line: str) -> Record | None:
    """Parse one line of a syslog file or a server's own log file."""
    # The traditional syslog line, by far the most common, in one match; it
    # cannot be mistaken for any of the other forms below.
    match = _SYSLOG.fullmatch(line)
    if match:
        # _stamp(match) would come to this, after a groupdict() per line.
        day = timestamps.parse_yearless(match["mon"], match["day"], match["hms"])
        return finish(day, match["host"], match["tag"], match["pid"], match["msg"])

    match = _RFC5424.fullmatch(line)
    if match:
        msg = _skip_structured_data(match["rest"])
        if msg is None:
            return None
        pid = match["pid"] if match["pid"] != "-" else ""
        return finish(_stamp(match), match["host"], match["tag"], pid, msg)

    match = _CTIME_STAMPED.fullmatch(line)
    if match:
        return finish(_stamp(match), "", "", match["pid"], match["rest"])

    match = _LOG4J.fullmatch(line)
    if match:
        return finish(_stamp(match), "", "", None, match["rest"])

    match = _STAMPED.fullmatch(line) or _TAI64N.fullmatch(line)
    if match:
        stamp, rest = _stamp(match), match["rest"]
        for pattern in (_WITH_HOST, _NO_HOST):
            header = pattern.fullmatch(rest)
            if header:
                host = header.groupdict().get("host") or ""
                return finish(stamp, host, header["tag"], header["pid"], header["msg"])
        header = _BRACKET_TAG.fullmatch(rest)
        if header:
            return finish(stamp, "", header["tag"], None, header["msg"])
        return None

    match = _PREFIXED.fullmatch(line)
    if match:
        return finish(_stamp(match), "", match["tag"], None, match["rest"])
    return None
