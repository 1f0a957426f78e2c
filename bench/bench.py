#!/usr/bin/env python3
"""Benchmark popbs against its speed targets, P1 to P4.

    make bench                                   # 1 GiB log, 5 runs each
    .venv/bin/python bench/bench.py --quick      # 100 MiB log, 3 runs each
    .venv/bin/python bench/bench.py --only P1,P4 --size 200M --runs 3
    .venv/bin/python bench/bench.py --profile    # also cProfile the P1 scan

Each figure is set beside a reference measured in the same run (the two
commands alternate, `--runs` times each; the table shows medians):

P1  `popbs scan --no-state --from-start --log LOG` of the generated log vs
    `LC_ALL=C grep -cE` of the markers popbs itself looks for (taken from
    `Recogniser().markers`, so the reference follows the code). The page cache
    is warmed first. Target: at most 1.5 times grep.
P2  `popbs sync` when the log holds no new line (its state is at the log's
    end; a grant file of 1 000 live grants and its hash map are published) vs
    `python -c "import click"` with the same interpreter. postmap is a wrapper
    that counts its calls: a no-op sync must not call it. Target: 1.25 times.
P3  `popbs merge` of 100 000 `IP TIME` lines (distinct addresses, all live)
    into an empty grant file, then `popbs publish`: the merge, the TTL prune
    and the map build of 100 000 grants, as two cron-less commands. vs
    `postmap hash:FILE` of the grant file that came out. Target: 1.5 times.
    A second row times the same as one command, `popbs merge --publish`.
P4  Peak memory (max RSS, taken by a small launcher with wait4) of the P1
    scan, on a 100 MiB log (a tenth of --size when that is 100 MiB or less)
    and on the P1 log. Target: at most 40 MiB, and flat (at most 2 MiB more).

popbs runs as `sys.executable -m popbs_tools`, from a copy of popbs_tools/
taken when the bench starts (edits made meanwhile cannot mix into one
report), and P2's reference starts the very same interpreter. Every popbs
command gets `--config` of an empty file, and Postfix's commands a private
MAIL_CONFIG directory whose empty main.cf is dated an hour back (a freshly
edited main.cf makes them wait ~2 s).

Generated logs are cached in the work directory (default bench/work/, which
git ignores) by size and seed; the same seed gives the same bytes, and a
smaller log is a prefix of a larger one. They are RFC 3164 syslog, mostly
Postfix traffic, with about 2% successful POP3/IMAP logins spread over the
servers popbs knows, some failed logins and other noise of those servers.

The markdown report goes to stdout, progress to stderr. Needs only the
standard library (and popbs_tools itself); P2 and P3 need Postfix's postmap
and postconf (`make system-packages`) and are skipped without them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.metadata
import ipaddress
import json
import os
import platform
import pstats
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORK = REPO / "bench" / "work"

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DEFAULT_SIZE = GiB
QUICK_SIZE = 100 * MiB
SMALL_MAX = 100 * MiB
DEFAULT_RUNS = 5
QUICK_RUNS = 3
PROFILE_SIZE = 100 * MiB
PROFILE_LINES = 15

P2_GRANTS = 1_000
P3_GRANTS = 100_000

TARGET_P1 = 1.5
TARGET_P2 = 1.25
TARGET_P3 = 1.5
TARGET_P4 = 40 * MiB
FLAT_SLACK = 2 * MiB

BENCHMARKS = ("P1", "P2", "P3", "P4")
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- sizes ---------------------------------------------------------------


def parse_size(text: str) -> int:
    """`1G`, `1GiB`, `100M`, `512K` (binary units) or plain bytes."""
    units = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = raw, ""
    if raw[-1:] in units:
        number, unit = raw[:-1], raw[-1]
    try:
        size = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size") from None
    if size < MiB:
        raise argparse.ArgumentTypeError(f"{text!r}: use at least 1M")
    return size


def format_size(size: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= scale:
            value = size / scale
            return (
                f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
            )
    return f"{size:.0f} B"


def format_seconds(seconds: float) -> str:
    if seconds >= 10:
        return f"{seconds:.1f} s"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.1 else f"{seconds * 1000:.1f} ms"


# --- the synthetic mail log -------------------------------------------------

GENERATOR_VERSION = 1
HOST = "mx1"
SERVER_V4 = "192.0.2.10"
SERVER_V6 = "2001:db8::25"
# Lines are on average this many seconds apart: a busy server, ~10 lines/s.
MEAN_GAP = 0.1
BASE_TIME = datetime(2026, 1, 4)


def words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


MONTHS = words("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec")
BLOCK_LINES = 1 << 16

FIRST = words(
    "alice bob carol dave erin frank grace heidi ivan judy karl lena max nina oskar "
    "paula quentin rosa sven tina ugo vera walter xenia yusuf zoe anna ben carla "
    "david eva felix greta hannah julia mallory oscar peggy trent"
)
LAST = words(
    "berg schmidt meyer fischer weber wagner becker hoffmann koch richter klein "
    "wolf neumann braun zimmer kraus lang huber kaiser fuchs peters jung"
)
WORDS = words(
    "alpha bluebird cedar delta ember fjord granite harbor indigo juniper kestrel "
    "lumen meadow nimbus orchid pioneer quartz raven sierra tundra umber vortex "
    "willow zephyr acme globex initech hooli umbrella stark"
)
TLDS = ("example", "test", "example.com", "example.net", "example.org")
LOCAL_DOMAINS = ("example.org", "example.net", "mail.example.com")
CIPHERS = (
    "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange "
    "X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
    "TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)",
    "TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits) key-exchange "
    "X25519 server-signature ECDSA (P-256) server-digest SHA256",
)
DNSBLS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")


def v4(number: int) -> str:
    """An address in 198.18.0.0/15 (RFC 2544, benchmarking), 0 <= number < 2**17."""
    return f"198.{18 + (number >> 16)}.{(number >> 8) & 255}.{number & 255}"


@dataclass
class LogStats:
    bytes: int = 0
    lines: int = 0
    logins: int = 0  # successful-login lines popbs should report
    loopback_logins: int = 0  # successful logins it must refuse (webmail)
    failed_logins: int = 0


@dataclass
class _Block:
    lines: list[str] = field(default_factory=list)
    grants: list[int] = field(default_factory=list)
    loopback: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class Traffic:
    """A deterministic stream of mail-log lines, in blocks."""

    def __init__(self, seed: int) -> None:
        rng = self.rng = random.Random(seed)
        self.block = _Block()
        self.t = 0.0
        self.second = -1
        self.minute = -1
        self.prefix = ""
        self.domains = [
            f"{rng.choice(WORDS)}{rng.randrange(100)}.{rng.choice(TLDS)}"
            for _ in range(400)
        ]
        self.users = [self._user_name() for _ in range(3000)]
        self.homes = [self._home() for _ in self.users]
        self.mtas = [self._mta() for _ in range(3000)]
        self.bots = [v4(rng.getrandbits(16)) for _ in range(5000)]
        self.senders = [
            f"{rng.choice(WORDS + FIRST)}{rng.choice(('', '.', '-'))}"
            f"{rng.choice(WORDS + LAST)}@{rng.choice(self.domains)}"
            for _ in range(5000)
        ]
        events: list[tuple[float, Callable[[], None]]] = [
            (0.22, self.inbound),
            (0.30, self.rejected),
            (0.14, self.postscreen),
            (0.06, self.submission),
            (0.12, self.misc),
            (0.06, self.imap_noise),
            (0.132, self.login),
            (0.033, self.failed_login),
        ]
        total = sum(weight for weight, _ in events)
        self.cumulative: list[float] = []
        running = 0.0
        for weight, _ in events:
            running += weight / total
            self.cumulative.append(running)
        self.cumulative[-1] = 1.0
        self.events = [event for _, event in events]

    # Pools.

    def _user_name(self) -> str:
        rng = self.rng
        first, last = rng.choice(FIRST), rng.choice(LAST)
        shape = rng.random()
        if shape < 0.4:
            name = f"{first}.{last}"
        elif shape < 0.7:
            name = f"{first[0]}{last}"
        else:
            name = f"{first}{rng.randrange(1, 100)}"
        return name if rng.random() < 0.5 else f"{name}@{rng.choice(LOCAL_DOMAINS)}"

    def _home(self) -> str:
        rng = self.rng
        shape = rng.random()
        if shape < 0.75:
            return v4((1 << 16) | rng.getrandbits(16))  # 198.19.0.0/16
        if shape < 0.95:
            net = f"2001:db8:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}"
            return f"{net}::{rng.randrange(1, 4096):x}"
        return ""  # roaming: a new address each time

    def _mta(self) -> tuple[str, str]:
        rng = self.rng
        if rng.random() < 0.08:
            address = (
                f"2001:db8:ff{rng.getrandbits(8):02x}::{rng.randrange(1, 65536):x}"
            )
        else:
            address = v4(rng.getrandbits(16))
        if rng.random() < 0.25:
            return "unknown", address
        kind = rng.choice(("mail", "mx", "smtp", "out", "mta", "relay", "mail-ej1-f"))
        return f"{kind}{rng.randrange(1, 300)}.{rng.choice(self.domains)}", address

    def _client_ip(self, index: int) -> str:
        home = self.homes[index]
        return home or v4(self.rng.getrandbits(16))

    # Small helpers.

    def qid(self) -> str:
        return f"{self.rng.getrandbits(40):010X}"

    def pid(self) -> int:
        return 1000 + self.rng.getrandbits(15)

    def session(self) -> str:
        return base64.b64encode(self.rng.randbytes(12)).decode()

    def local_address(self) -> str:
        user = self.rng.choice(self.users)
        return user if "@" in user else f"{user}@{LOCAL_DOMAINS[0]}"

    def emit(self, body: str) -> None:
        self.block.lines.append(self.prefix + body)

    def tick(self, lines: int) -> None:
        self.t += lines * MEAN_GAP * 2 * self.rng.random()
        second = int(self.t)
        if second != self.second:
            self.second = second
            when = BASE_TIME + timedelta(seconds=second)
            self.prefix = (
                f"{MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S} {HOST} "
            )
            if second // 60 != self.minute:
                self.minute = second // 60
                self.emit(f"CRON[{self.pid()}]: (root) CMD (popbs sync)")

    # Events: one SMTP session, one login, one stray line...

    def inbound(self) -> None:
        rng, emit = self.rng, self.emit
        name, ip = rng.choice(self.mtas)
        client = f"{name}[{ip}]"
        sender = rng.choice(self.senders)
        rcpt = self.local_address()
        pid, qid, qid2 = self.pid(), self.qid(), self.qid()
        size = rng.randrange(1500, 250_000)
        mid = f"<{rng.getrandbits(64):016x}@{sender.partition('@')[2]}>"
        if rng.random() < 0.5:
            port = rng.randrange(1024, 65536)
            emit(
                f"postfix/postscreen[{pid - 7}]: CONNECT from [{ip}]:{port} "
                f"to [{SERVER_V4}]:25"
            )
            emit(f"postfix/postscreen[{pid - 7}]: PASS OLD [{ip}]:{port}")
        emit(f"postfix/smtpd[{pid}]: connect from {client}")
        tls = rng.random() < 0.7
        if tls:
            emit(
                f"postfix/smtpd[{pid}]: Anonymous TLS connection established "
                f"from {client}: {rng.choice(CIPHERS)}"
            )
        emit(f"postfix/smtpd[{pid}]: {qid}: client={client}")
        emit(f"postfix/cleanup[{self.pid()}]: {qid}: message-id={mid}")
        if rng.random() < 0.4:
            emit(
                f"opendkim[811]: {qid}: DKIM verification successful "
                f"(d={sender.partition('@')[2]} s=s{rng.randrange(1, 9)})"
            )
        emit(
            f"postfix/qmgr[1102]: {qid}: from=<{sender}>, size={size}, "
            "nrcpt=1 (queue active)"
        )
        commands = "ehlo=2 starttls=1 " if tls else "ehlo=1 "
        emit(
            f"postfix/smtpd[{pid}]: disconnect from {client} {commands}mail=1 "
            f"rcpt=1 data=1 quit=1 commands={7 if tls else 5}"
        )
        amavis = rng.randrange(2000, 9000)
        spam = rng.random() < 0.05
        verdict = "Blocked SPAM" if spam else "Passed CLEAN"
        hits = rng.uniform(6, 30) if spam else rng.uniform(-5, 4)
        ms = rng.randrange(200, 3000)
        tail = "" if spam else f", queued_as: {qid2}"
        emit(
            f"amavis[{amavis}]: ({amavis}-{rng.randrange(1, 40):02d}) {verdict} "
            f"{{RelayedInbound}}, [{ip}]:{rng.randrange(1024, 65536)} [{ip}] "
            f"<{sender}> -> <{rcpt}>, Queue-ID: {qid}, Message-ID: {mid}, "
            f"mail_id: {self.session()[:12]}, Hits: {hits:.3f}, size: {size}"
            f"{tail}, {ms} ms"
        )
        if spam:
            status = "250 2.7.0 Ok, discarded, id=" + f"{amavis}-01 - spam"
        else:
            status = (
                "250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): "
                f"250 2.0.0 Ok: queued as {qid2}"
            )
        emit(
            f"postfix/smtp[{self.pid()}]: {qid}: to=<{rcpt}>, "
            f"relay=127.0.0.1[127.0.0.1]:10024, delay={ms / 1000 + 0.1:.1f}, "
            f"delays=0.08/0/0.01/{ms / 1000:.2f}, dsn=2.0.0, status=sent ({status})"
        )
        emit(f"postfix/qmgr[1102]: {qid}: removed")
        if spam:
            self.tick(12)
            return
        back = self.pid()
        emit(f"postfix/smtpd[{back}]: connect from localhost[127.0.0.1]")
        emit(f"postfix/smtpd[{back}]: {qid2}: client=localhost[127.0.0.1]")
        emit(f"postfix/cleanup[{self.pid()}]: {qid2}: message-id={mid}")
        emit(
            f"postfix/qmgr[1102]: {qid2}: from=<{sender}>, size={size + 900}, "
            "nrcpt=1 (queue active)"
        )
        emit(
            f"postfix/smtpd[{back}]: disconnect from localhost[127.0.0.1] ehlo=1 "
            "mail=1 rcpt=1 data=1 quit=1 commands=5"
        )
        session = self.session()
        emit(
            f"dovecot: lmtp({rcpt})<{self.pid()}><{session}>: msgid={mid}: "
            "saved mail to INBOX"
        )
        emit(
            f"postfix/lmtp[{self.pid()}]: {qid2}: to=<{rcpt}>, "
            f"relay={HOST}.{LOCAL_DOMAINS[0]}[private/dovecot-lmtp], delay=0.04, "
            f"delays=0.01/0/0.01/0.02, dsn=2.0.0, status=sent (250 2.0.0 <{rcpt}> "
            f"{session} Saved)"
        )
        emit(f"postfix/qmgr[1102]: {qid2}: removed")
        self.tick(18)

    def rejected(self) -> None:
        rng, emit = self.rng, self.emit
        pid = self.pid()
        if rng.random() < 0.6:
            name, ip = "unknown", rng.choice(self.bots)
        else:
            name, ip = rng.choice(self.mtas)
        client = f"{name}[{ip}]"
        helo = rng.choice((name, f"[{ip}]", rng.choice(WORDS), "User"))
        sender = rng.choice(self.senders)
        rcpt = self.local_address()
        emit(f"postfix/smtpd[{pid}]: connect from {client}")
        if name == "unknown" and rng.random() < 0.3:
            emit(
                f"postfix/smtpd[{pid}]: warning: hostname "
                f"{ip.replace('.', '-')}.dyn.{rng.choice(self.domains)} does not "
                f"resolve to address {ip}: Name or service not known"
            )
        choice = rng.random()
        if choice < 0.35:
            bl = rng.choice(DNSBLS)
            reason = (
                f"554 5.7.1 Service unavailable; Client host [{ip}] blocked using "
                f"{bl}; https://check.{bl}/query/ip/{ip}"
            )
        elif choice < 0.55:
            reason = (
                f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in "
                "virtual mailbox table"
            )
        elif choice < 0.75:
            rcpt = f"{rng.choice(WORDS)}@{rng.choice(self.domains)}"
            reason = f"554 5.7.1 <{rcpt}>: Relay access denied"
        elif choice < 0.9:
            reason = (
                f"450 4.7.1 Client host rejected: cannot find your hostname, [{ip}]"
            )
        else:
            reason = f"450 4.7.1 <{helo}>: Helo command rejected: Host not found"
        emit(
            f"postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from {client}: {reason}; "
            f"from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{helo}>"
        )
        if rng.random() < 0.3:
            emit(f"postfix/smtpd[{pid}]: lost connection after RCPT from {client}")
        emit(
            f"postfix/smtpd[{pid}]: disconnect from {client} ehlo=1 mail=1 rcpt=0/1 "
            "quit=1 commands=3/4"
        )
        self.tick(4)

    def postscreen(self) -> None:
        rng, emit = self.rng, self.emit
        pid, ip, port = 1099, rng.choice(self.bots), rng.randrange(1024, 65536)
        emit(
            f"postfix/postscreen[{pid}]: CONNECT from [{ip}]:{port} to [{SERVER_V4}]:25"
        )
        choice = rng.random()
        if choice < 0.5:
            bl = rng.choice(DNSBLS)
            emit(
                f"postfix/dnsblog[{self.pid()}]: addr {ip} listed by domain {bl} "
                f"as 127.0.0.{rng.randrange(2, 12)}"
            )
            emit(f"postfix/postscreen[{pid}]: DNSBL rank 3 for [{ip}]:{port}")
            emit(
                f"postfix/postscreen[{pid}]: NOQUEUE: reject: RCPT from "
                f"[{ip}]:{port}: 550 5.7.1 Service unavailable; client [{ip}] "
                f"blocked using {bl}; from=<{rng.choice(self.senders)}>, "
                f"to=<{self.local_address()}>, proto=ESMTP, helo=<{rng.choice(WORDS)}>"
            )
        elif choice < 0.8:
            emit(
                f"postfix/postscreen[{pid}]: PREGREET 11 after "
                f"0.{rng.randrange(10, 99)} from [{ip}]:{port}: "
                f"EHLO {rng.choice(WORDS)}\\r\\n"
            )
        else:
            emit(
                f"postfix/postscreen[{pid}]: HANGUP after 0.{rng.randrange(10, 99)} "
                f"from [{ip}]:{port} in tests before SMTP handshake"
            )
        emit(f"postfix/postscreen[{pid}]: DISCONNECT [{ip}]:{port}")
        self.tick(3)

    def submission(self) -> None:
        """A user sends: SASL on 587, or POP-before-SMTP on 25 from home."""
        rng, emit = self.rng, self.emit
        index = rng.randrange(len(self.users))
        user = self.users[index]
        ip = self._client_ip(index)
        client = f"unknown[{ip}]"
        pid, qid = self.pid(), self.qid()
        sender = user if "@" in user else f"{user}@{LOCAL_DOMAINS[0]}"
        rcpt = rng.choice(self.senders)
        sasl = rng.random() < 0.7
        service = "submission/smtpd" if sasl else "smtpd"
        emit(f"postfix/{service}[{pid}]: connect from {client}")
        emit(
            f"postfix/{service}[{pid}]: Anonymous TLS connection established from "
            f"{client}: {rng.choice(CIPHERS)}"
        )
        auth = f", sasl_method=PLAIN, sasl_username={sender}" if sasl else ""
        emit(f"postfix/{service}[{pid}]: {qid}: client={client}{auth}")
        mid = f"<{rng.getrandbits(64):016x}@{sender.partition('@')[2]}>"
        emit(f"postfix/cleanup[{self.pid()}]: {qid}: message-id={mid}")
        emit(
            f"opendkim[811]: {qid}: DKIM-Signature field added (s=mail, "
            f"d={sender.partition('@')[2]})"
        )
        size = rng.randrange(800, 2_000_000)
        emit(
            f"postfix/qmgr[1102]: {qid}: from=<{sender}>, size={size}, nrcpt=1 "
            "(queue active)"
        )
        emit(
            f"postfix/{service}[{pid}]: disconnect from {client} ehlo=2 starttls=1 "
            f"{'auth=1 ' if sasl else ''}mail=1 rcpt=1 data=1 quit=1 "
            f"commands={8 if sasl else 7}"
        )
        domain = rcpt.partition("@")[2]
        relay_ip = v4(rng.getrandbits(16))
        if rng.random() < 0.9:
            emit(
                f"postfix/smtp[{self.pid()}]: {qid}: to=<{rcpt}>, relay=mx.{domain}"
                f"[{relay_ip}]:25, delay={rng.uniform(0.2, 4):.1f}, "
                f"delays=0.1/0.01/{rng.uniform(0.05, 1):.2f}/{rng.uniform(0.1, 2):.2f},"
                f" dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {self.qid()})"
            )
            emit(f"postfix/qmgr[1102]: {qid}: removed")
        else:
            emit(
                f"postfix/smtp[{self.pid()}]: {qid}: to=<{rcpt}>, relay=none, "
                f"delay={rng.uniform(30, 900):.0f}, delays=0.1/0.01/30/0, "
                f"dsn=4.4.1, status=deferred (connect to mx.{domain}[{relay_ip}]:25:"
                " Connection timed out)"
            )
        self.tick(9)

    def misc(self) -> None:
        rng, emit = self.rng, self.emit
        choice = rng.random()
        ip = rng.choice(self.bots)
        if choice < 0.25:
            emit(
                f"postfix/smtpd[{self.pid()}]: warning: unknown[{ip}]: SASL LOGIN "
                "authentication failed: UGFzc3dvcmQ6"
            )
        elif choice < 0.45:
            emit(
                f"postfix/smtpd[{self.pid()}]: lost connection after AUTH from "
                f"unknown[{ip}]"
            )
        elif choice < 0.55:
            when = BASE_TIME + timedelta(seconds=self.second)
            emit(
                f"postfix/anvil[{self.pid()}]: statistics: max connection rate "
                f"{rng.randrange(1, 30)}/60s for (smtp:{ip}) at "
                f"{MONTHS[when.month - 1]} {when.day:2d} {when:%H:%M:%S}"
            )
        elif choice < 0.65:
            emit(
                f"postfix/smtpd[{self.pid()}]: improper command pipelining after "
                f"CONNECT from unknown[{ip}]: QUIT\\r\\n"
            )
        elif choice < 0.75:
            emit(
                f"postfix/cleanup[{self.pid()}]: {self.qid()}: warning: header "
                f"Subject: Rechnung Nr. {rng.randrange(10000)} fällig – bitte "
                f"prüfen from unknown[{ip}]; from=<{rng.choice(self.senders)}> "
                f"to=<{self.local_address()}> proto=ESMTP helo=<{rng.choice(WORDS)}>"
            )
        elif choice < 0.85:
            qid = self.qid()
            emit(
                f"postfix/bounce[{self.pid()}]: {qid}: sender non-delivery "
                f"notification: {self.qid()}"
            )
        elif choice < 0.95:
            emit(
                f"postfix/smtp[{self.pid()}]: connect to mx.{rng.choice(self.domains)}"
                f"[{v4(rng.getrandbits(16))}]:25: Connection refused"
            )
        else:
            emit(
                f"postfix/qmgr[1102]: {self.qid()}: from=<{rng.choice(self.senders)}>,"
                " status=expired, returned to sender"
            )
        self.tick(1)

    def imap_noise(self) -> None:
        """What POP3/IMAP servers log besides logins; some hold popbs's markers."""
        rng, emit = self.rng, self.emit
        index = rng.randrange(len(self.users))
        user, ip = self.users[index], self._client_ip(index)
        choice = rng.random()
        if choice < 0.35:
            emit(
                f"dovecot: imap({user})<{self.pid()}><{self.session()}>: "
                f"Logged out in={rng.randrange(50, 5000)} "
                f"out={rng.randrange(500, 900_000)} deleted=0 expunged=0 trashed=0 "
                "hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"
            )
        elif choice < 0.5:
            emit(
                f"dovecot: pop3({user})<{self.pid()}><{self.session()}>: "
                f"Disconnected: Logged out top=0/0, retr=1/{rng.randrange(900, 90000)}"
                ", del=1/1, size=2210"
            )
        elif choice < 0.65:
            emit(
                "dovecot: imap-login: Disconnected: Connection closed (no auth "
                f"attempts in 0 secs): user=<>, rip={ip}, lip={SERVER_V4}, TLS "
                "handshaking: SSL_accept() failed: error:0A000416:SSL routines::"
                f"sslv3 alert certificate unknown, session=<{self.session()}>"
            )
        elif choice < 0.75:
            emit(f"imapd: Connection, ip=[::ffff:{v4(rng.getrandbits(16))}]")
        elif choice < 0.85:
            emit(
                f"imapd-ssl: LOGOUT, user={user}, ip=[::ffff:{v4(rng.getrandbits(16))}]"
                f", headers=0, body=0, rcvd={rng.randrange(50, 900)}, "
                f"sent={rng.randrange(400, 90000)}, time={rng.randrange(1, 3000)}"
            )
        elif choice < 0.9:
            emit(f"cyrus/imap[{self.pid()}]: accepted connection")
        elif choice < 0.95:
            emit(
                f"imapd[{self.pid()}]: Logout user={user} host=client.example.org "
                f"[{v4(rng.getrandbits(16))}]"
            )
        else:
            emit(
                f"cyrus/master[1001]: process type:SERVICE name:imap "
                f"path:/usr/lib/cyrus/bin/imapd age:{rng.uniform(1, 900):.3f}s "
                f"pid:{self.pid()} exited, status 0"
            )
        self.tick(1)

    def login(self) -> None:
        """A successful POP3/IMAP login, in one of the supported servers' forms."""
        rng, emit = self.rng, self.emit
        index = rng.randrange(len(self.users))
        user, ip = self.users[index], self._client_ip(index)
        pid = self.pid()
        kind = rng.random()
        block = self.block
        if kind < 0.62:
            service = "imap" if rng.random() < 0.75 else "pop3"
            verb = "Logged in" if kind < 0.06 else "Login"
            lip = SERVER_V6 if ":" in ip else SERVER_V4
            extra = ", TLS"
            if service == "imap" and rng.random() < 0.08:
                ip = lip = "::1" if rng.random() < 0.5 else "127.0.0.1"  # webmail
                extra = ", secured"
            method = rng.choice(("PLAIN", "PLAIN", "PLAIN", "LOGIN", "CRAM-MD5"))
            emit(
                f"dovecot: {service}-login: {verb}: user=<{user}>, method={method}, "
                f"rip={ip}, lip={lip}, mpid={pid}{extra}, session=<{self.session()}>"
            )
        elif kind < 0.74:
            tag = rng.choice(("imapd", "imapd-ssl", "pop3d", "pop3d-ssl"))
            protocol = "IMAP" if tag.startswith("imap") else "POP3"
            shown = ip if ":" in ip else f"::ffff:{ip}"
            emit(
                f"{tag}: LOGIN, user={user}, ip=[{shown}], "
                f"port=[{rng.randrange(1024, 65536)}], protocol={protocol}"
            )
        elif kind < 0.84:
            service = rng.choice(("imap", "imaps", "pop3", "pop3s"))
            mech = rng.choice(("plaintext", "plaintext+TLS", "PLAIN+TLS"))
            emit(
                f"cyrus/{service}[{pid}]: login: client.example.org [{ip}] "
                f"{user.partition('@')[0]} {mech} User logged in "
                f"SESSIONID=<{HOST}-{pid}-{int(self.t)}-1-{rng.getrandbits(60)}>"
            )
        elif kind < 0.92:
            if rng.random() < 0.5:
                emit(
                    f"imapd[{pid}]: Login user={user.partition('@')[0]} "
                    f"host=client.example.org [{ip}]"
                )
            else:
                count = rng.randrange(0, 40)
                emit(
                    f"ipop3d[{pid}]: Login user={user.partition('@')[0]} "
                    f"host=client.example.org [{ip}] nmsgs={count}/{count}"
                )
        elif rng.random() < 0.6:
            emit(
                f'in.qpopper[{pid}]: (v4.0.9) POP login by user "'
                f'{user.partition("@")[0]}" at (client.example.org) {ip} '
                "[pop_log.c:244]"
            )
        else:
            emit(
                f"in.qpopper[{pid}]: Stats: {user.partition('@')[0]} "
                f"{rng.randrange(0, 9)} {rng.randrange(0, 90000)} 0 0 "
                f"client.example.org {ip}"
            )
        index_in_block = len(block.lines) - 1
        if ip in ("::1", "127.0.0.1"):
            block.loopback.append(index_in_block)
        else:
            block.grants.append(index_in_block)
        self.tick(1)

    def failed_login(self) -> None:
        rng, emit = self.rng, self.emit
        user, ip = rng.choice(self.users), rng.choice(self.bots)
        name = user.partition("@")[0]
        choice = rng.random()
        if choice < 0.45:
            emit(
                f"dovecot: imap-login: Disconnected (auth failed, "
                f"{rng.randrange(1, 4)} attempts in {rng.randrange(2, 12)} secs): "
                f"user=<{user}>, method=PLAIN, rip={ip}, lip={SERVER_V4}, TLS, "
                f"session=<{self.session()}>"
            )
        elif choice < 0.6:
            emit(
                f"dovecot: auth-worker({self.pid()}): pam({user},{ip}): "
                "pam_authenticate() failed: Authentication failure (password "
                "mismatch?)"
            )
        elif choice < 0.75:
            emit(f"pop3d: LOGIN FAILED, user={user}, ip=[::ffff:{ip}]")
        elif choice < 0.85:
            emit(
                f"cyrus/imap[{self.pid()}]: badlogin: unknown [{ip}] plaintext "
                f"{name} SASL(-13): authentication failure: checkpass failed"
            )
        elif choice < 0.93:
            emit(
                f"ipop3d[{self.pid()}]: Login failed user={name} auth={name} "
                f"host=unknown [{ip}]"
            )
        else:
            emit(
                f"in.qpopper[{self.pid()}]: {name} at unknown ({ip}): -ERR [AUTH] "
                f'Password supplied for "{name}" is incorrect.'
            )
        self.block.failed.append(len(self.block.lines) - 1)
        self.tick(1)

    def blocks(self) -> Iterator[_Block]:
        rng, cumulative, events = self.rng, self.cumulative, self.events
        self.tick(0)
        while True:
            lines = self.block.lines
            while len(lines) < BLOCK_LINES:
                events[bisect(cumulative, rng.random())]()
            yield self.block
            self.block = _Block()


def generate_log(path: Path, size: int, seed: int) -> LogStats:
    """Write the first `size` bytes (whole lines) of the seed's stream to `path`."""
    stats = LogStats()
    temp = path.with_name(path.name + ".part")
    with open(temp, "wb") as out:
        for block in Traffic(seed).blocks():
            data = ("\n".join(block.lines) + "\n").encode()
            kept = len(block.lines)
            if stats.bytes + len(data) > size:
                room, kept = size - stats.bytes, 0
                for line in block.lines:
                    length = len(line.encode()) + 1
                    if length > room:
                        break
                    room -= length
                    kept += 1
                data = ("\n".join(block.lines[:kept]) + "\n").encode() if kept else b""
            out.write(data)
            stats.bytes += len(data)
            stats.lines += kept
            stats.logins += sum(1 for index in block.grants if index < kept)
            stats.loopback_logins += sum(1 for index in block.loopback if index < kept)
            stats.failed_logins += sum(1 for index in block.failed if index < kept)
            if kept < len(block.lines):
                break
    os.replace(temp, path)
    return stats


def mail_log(work: Path, size: int, seed: int) -> tuple[Path, LogStats]:
    """The cached log of this size and seed, generated if needed."""
    directory = work / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"mail-{format_size(size).replace(' ', '')}-seed{seed}-v{GENERATOR_VERSION}"
    path, meta = directory / f"{stem}.log", directory / f"{stem}.json"
    try:
        stats = LogStats(**json.loads(meta.read_text()))
        if path.stat().st_size == stats.bytes:
            return path, stats
    except (OSError, ValueError, TypeError):
        pass
    free = shutil.disk_usage(directory).free
    if free < size + 256 * MiB:
        raise SystemExit(
            f"bench: {directory} has {format_size(free)} free, too little for a "
            f"{format_size(size)} log; choose a smaller --size or another --work"
        )
    say(f"generating a {format_size(size)} mail log in {path} ...")
    started = time.perf_counter()
    stats = generate_log(path, size, seed)
    meta.write_text(json.dumps(stats.__dict__, indent=1) + "\n")
    say(
        f"  {count(stats.lines)} lines, {count(stats.logins)} logins to grant "
        f"({stats.logins / stats.lines:.1%}), in {time.perf_counter() - started:.1f} s"
    )
    return path, stats


def warm(path: Path) -> None:
    """Read a file once so that every timed run finds it in the page cache."""
    with open(path, "rb", buffering=0) as handle:
        while handle.read(16 * MiB):
            pass


# --- running commands ---------------------------------------------------------


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss: int  # bytes
    output: str


class CommandFailed(RuntimeError):
    pass


# Runs the command given after REPORT and writes "SECONDS MAXRSS_KIB" to REPORT.
# Linux counts the pre-exec memory of the process that execs into a child's
# max RSS, and subprocess spawns with vfork, so measured from here a child's
# max RSS would be at least this (large) process's. This small launcher
# forks the command itself; its own few MiB are the floor of the figure.
LAUNCHER = """
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as out:
    out.write(f"{seconds!r} {usage.ru_maxrss}\\n")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run(
    command: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    output: Path | None = None,
    capture: bool = False,
    accept: tuple[int, ...] = (0,),
    cwd: Path = REPO,
) -> Run:
    """Run a command: its wall time from fork to reaping, and its max RSS.

    Both are taken by LAUNCHER, so neither includes the launcher's start.
    """
    argv = [str(part) for part in command]
    with (
        tempfile.TemporaryDirectory() as scratch,
        tempfile.TemporaryFile() as errors,
        tempfile.TemporaryFile() as captured,
        open(output or os.devnull, "wb") as sink,
    ):
        report = Path(scratch) / "report"
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *argv],
            stdin=subprocess.DEVNULL,
            stdout=captured if capture else sink,
            stderr=errors,
            env=dict(env),
            cwd=cwd,
        )
        if done.returncode not in accept:
            errors.seek(0)
            detail = errors.read().decode(errors="replace").strip()
            raise CommandFailed(
                f"{shlex.join(argv)} exited with {done.returncode}: {detail}"
            )
        seconds, max_rss = report.read_text().split()
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    return Run(float(seconds), int(max_rss) * KiB, text)


@dataclass
class Series:
    """Repeated runs of one command."""

    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def spread(self) -> str:
        times = [run.seconds for run in self.runs]
        return f"{format_seconds(min(times))}–{format_seconds(max(times))}"

    @property
    def max_rss(self) -> int:
        return max(run.max_rss for run in self.runs)


def find_tool(name: str) -> Path | None:
    search = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    found = shutil.which(name, path=search)
    return Path(found) if found else None


def write_script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def counting_wrapper(path: Path, real: Path, counter: Path) -> None:
    """A script that notes each call in `counter`, then runs `real`."""
    write_script(path, f'#!/bin/sh\necho "$*" >> "{counter}"\nexec "{real}" "$@"\n')


def calls(counter: Path) -> int:
    try:
        return len(counter.read_text().splitlines())
    except FileNotFoundError:
        return 0


@dataclass
class Bench:
    work: Path
    size: int
    runs: int
    seed: int
    env: dict[str, str]
    python: str = sys.executable
    postmap: Path | None = None
    postconf: Path | None = None
    config: Path = Path()
    code: Path = REPO  # where `python -m popbs_tools` finds the code measured
    fingerprint: str = ""
    scans: dict[int, tuple[Series, LogStats]] = field(default_factory=dict)
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def popbs(self) -> list[str]:
        return [self.python, "-m", "popbs_tools"]

    def run(
        self,
        command: Sequence[str | Path],
        env: Mapping[str, str] | None = None,
        *,
        output: Path | None = None,
        capture: bool = False,
        accept: tuple[int, ...] = (0,),
    ) -> Run:
        """Run with the bench's environment, in the snapshot of the code."""
        return run(
            command,
            self.env if env is None else env,
            output=output,
            capture=capture,
            accept=accept,
            cwd=self.code,
        )

    def snapshot(self) -> None:
        """Copy popbs_tools/ as it is now: every run measures the same code.

        Run with the copy as working directory, `python -m popbs_tools` imports
        it ahead of the editable install, so edits made to the working tree
        while the bench runs cannot mix into its figures.
        """
        self.code = fresh(self.work / "snapshot")
        shutil.copytree(
            REPO / "popbs_tools",
            self.code / "popbs_tools",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        digest = hashlib.sha256()
        for path in sorted((self.code / "popbs_tools").rglob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        self.fingerprint = digest.hexdigest()[:12]
        self.run([self.python, "-m", "compileall", "-q", "popbs_tools"])
        sys.path.insert(0, str(self.code))

    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = self.work / "popbs.conf"
        self.config.write_text("# empty: the bench gives every setting itself\n")
        self.postmap, self.postconf = find_tool("postmap"), find_tool("postconf")
        mail_config = self.work / "postfix"
        mail_config.mkdir(exist_ok=True)
        main_cf = mail_config / "main.cf"
        main_cf.write_text("")
        an_hour_ago = time.time() - 3600
        os.utime(main_cf, (an_hour_ago, an_hour_ago))
        self.env["MAIL_CONFIG"] = str(mail_config)
        self.snapshot()

    # P1 and P4 share the scans.

    def scan_series(
        self, size: int, output: Path | None = None
    ) -> tuple[Series, LogStats]:
        if size in self.scans and output is None:
            return self.scans[size]
        log, stats = mail_log(self.work, size, self.seed)
        warm(log)
        series = Series()
        say(f"scanning the {format_size(size)} log, {self.runs} runs ...")
        for _ in range(self.runs):
            series.runs.append(self.run(self.scan_command(log), output=output))
        self.scans[size] = series, stats
        return series, stats

    def scan_command(self, log: Path) -> list[str]:
        return [
            *self.popbs,
            "scan",
            "--no-state",
            "--from-start",
            "--config",
            str(self.config),
            "--log",
            str(log),
        ]

    def p1(self) -> None:
        # The markers of the snapshot that is measured (see snapshot()).
        from popbs_tools.recognise import Recogniser

        markers = Recogniser().markers
        pattern = "|".join(ere_escape(marker.decode()) for marker in markers)
        log, stats = mail_log(self.work, self.size, self.seed)
        warm(log)
        grep_env = dict(self.env, LC_ALL="C")
        measured, reference = Series(), Series()
        say(f"P1: popbs scan vs grep on the {format_size(self.size)} log, {self.runs}×")
        grep = ["grep", "-cE", pattern, str(log)]
        for _ in range(self.runs):
            measured.runs.append(self.run(self.scan_command(log)))
            reference.runs.append(self.run(grep, grep_env, capture=True, accept=(0, 1)))
        self.scans[self.size] = measured, stats
        ratio = measured.median / reference.median
        self.rows.append(
            (
                f"P1 scan, {format_size(self.size)} log",
                format_seconds(measured.median),
                f"{format_seconds(reference.median)} (grep -cE)",
                f"{ratio:.2f}×",
                verdict(f"≤ {TARGET_P1}×", ratio <= TARGET_P1),
            )
        )
        candidates = count(int(reference.runs[0].output.strip() or 0))
        self.notes += [
            f"P1: `python -m popbs_tools scan --no-state --from-start --config EMPTY "
            f"--log LOG >/dev/null` vs `LC_ALL=C grep -cE {shlex.quote(pattern)} LOG`; "
            f"spread {measured.spread} vs {reference.spread}. The log: "
            f"{count(stats.lines)} lines, {count(stats.logins)} logins to grant "
            f"({stats.logins / stats.lines:.1%}) + {count(stats.loopback_logins)} "
            f"loopback (refused) + {count(stats.failed_logins)} failed; grep counts "
            f"{candidates} lines holding a marker.",
        ]

    def p4(self) -> None:
        small_size = SMALL_MAX if self.size > SMALL_MAX else self.size // 10
        with tempfile.TemporaryDirectory(dir=self.work) as scratch:
            output = Path(scratch) / "scan.out"
            say(f"P4: memory of the scan of the {format_size(small_size)} log")
            small, small_stats = self.scan_series(small_size, output)
            found = len(output.read_text().splitlines())
        say(f"P4: memory of the scan of the {format_size(self.size)} log")
        large, _ = self.scan_series(self.size)
        growth = large.max_rss - small.max_rss
        met = large.max_rss <= TARGET_P4 and growth <= FLAT_SLACK
        self.rows.append(
            (
                "P4 scan's max RSS",
                f"{format_size(small_size)} log: {format_size(small.max_rss)}; "
                f"{format_size(self.size)} log: {format_size(large.max_rss)}",
                "—",
                f"{growth / MiB:+.1f} MiB",
                verdict(f"≤ {format_size(TARGET_P4)}, flat", met),
            )
        )
        expected = small_stats.logins
        check = "as expected" if found == expected else f"EXPECTED {expected}"
        self.notes.append(
            f"P4: max RSS of the scan process itself (wait4), the largest of "
            f"{self.runs} runs; flat means at most {format_size(FLAT_SLACK)} of "
            f"growth. The {format_size(small_size)} scan reported "
            f"{count(found)} logins ({check}) in {format_seconds(small.median)} "
            "(median)."
        )

    def p2(self) -> None:
        assert self.postmap is not None
        directory = fresh(self.work / "p2")
        counter = directory / "postmap-calls"
        wrapper = directory / "postmap"
        counting_wrapper(wrapper, self.postmap, counter)
        # Made now, before the map is built: a postconf that changed after the
        # map was built may answer differently, so popbs would ask it again.
        self.make_counting_postconf(directory)
        log, _ = mail_log(self.work, self.size, self.seed)
        grant_file, state_dir = directory / "popbs", directory / "state"
        settings = [
            "--config",
            str(self.config),
            "--log",
            str(log),
            "--map",
            str(grant_file),
            "--state-dir",
            str(state_dir),
            "--postmap",
            str(wrapper),
        ]
        sync = [*self.popbs, "sync", *settings]
        say(f"P2: first sync over the whole {format_size(self.size)} log (setup) ...")
        self.run(sync)
        # Live grants: all within the TTL for the next ten minutes at least.
        rng = random.Random(self.seed)
        now = int(time.time())
        entries = directory / "grants.txt"
        entries.write_text(
            "".join(
                f"{v4(number)} {now - rng.randrange(600)}\n"
                for number in rng.sample(range(1 << 17), P2_GRANTS)
            )
        )
        self.run([*self.popbs, "merge", *settings, str(entries)])
        self.run([*self.popbs, "publish", *settings])
        self.run(sync)  # warm-up, and the steady state
        map_file = next(directory.glob("popbs.*"))
        before, calls_before = map_file.stat(), calls(counter)

        import_click = [self.python, "-c", "import click"]
        measured, reference = Series(), Series()
        say(f"P2: no-op popbs sync vs python -c 'import click', {self.runs}×")
        for _ in range(self.runs):
            measured.runs.append(self.run(sync))
            reference.runs.append(self.run(import_click))
        after, calls_after = map_file.stat(), calls(counter)
        postmap_calls = calls_after - calls_before
        unchanged = (before.st_ino, before.st_mtime_ns) == (
            after.st_ino,
            after.st_mtime_ns,
        )
        no_call = postmap_calls == 0 and unchanged
        postconf_calls = self.count_postconf_calls(sync, directory)

        ratio = measured.median / reference.median
        self.rows.append(
            (
                "P2 sync, no new line",
                format_seconds(measured.median),
                f'{format_seconds(reference.median)} (python -c "import click")',
                f"{ratio:.2f}×",
                verdict(f"≤ {TARGET_P2}×", ratio <= TARGET_P2 and no_call),
            )
        )
        postmap_note = (
            "no postmap call"
            if no_call
            else f"POSTMAP CALLED {postmap_calls} times, map "
            f"{'unchanged' if unchanged else 'REPLACED'}"
        )
        self.notes.append(
            f"P2: `python -m popbs_tools sync --config EMPTY --log LOG --map "
            f"GRANTS --state-dir DIR --postmap COUNTING-WRAPPER`, state at the end "
            f"of the {format_size(self.size)} log, {count(P2_GRANTS)} live grants "
            f"published as {map_file.name} (map type left to Postfix's "
            f"default_database_type); spread {measured.spread} vs "
            f"{reference.spread}. During the {self.runs} timed syncs: "
            f"**{postmap_note}**. postconf runs per no-op sync (an extra, untimed "
            f"run with a counting postconf first on PATH): {postconf_calls}."
        )

    def count_postconf_calls(self, sync: list[str], directory: Path) -> str:
        if self.postconf is None:
            return "postconf not found"
        bin_dir, counter = directory / "bin", directory / "postconf-calls"
        before = calls(counter)
        env = dict(self.env, PATH=f"{bin_dir}{os.pathsep}{self.env.get('PATH', '')}")
        self.run(sync, env)
        return str(calls(counter) - before)

    def make_counting_postconf(self, directory: Path) -> None:
        if self.postconf is not None:
            (directory / "bin").mkdir()
            counter = directory / "postconf-calls"
            counting_wrapper(directory / "bin" / "postconf", self.postconf, counter)

    def p3(self) -> None:
        assert self.postmap is not None
        directory = fresh(self.work / "p3")
        grant_file, state_dir = directory / "popbs", directory / "state"
        rng = random.Random(self.seed + 3)
        v4_count = P3_GRANTS * 9 // 10
        addresses = [v4(number) for number in rng.sample(range(1 << 17), v4_count)]
        v6: set[str] = set()
        while len(v6) < P3_GRANTS - v4_count:
            number = (0x20010DB8 << 96) | rng.getrandbits(96)
            v6.add(ipaddress.IPv6Address(number).compressed)
        addresses += sorted(v6)
        rng.shuffle(addresses)
        now = int(time.time())
        entries = directory / "grants.txt"
        entries.write_text(
            "".join(f"{address} {now - rng.randrange(900)}\n" for address in addresses)
        )
        settings = [
            "--config",
            str(self.config),
            "--map",
            str(grant_file),
            "--state-dir",
            str(state_dir),
        ]
        merge = [*self.popbs, "merge", *settings, str(entries)]
        publish = [*self.popbs, "publish", *settings]
        merge_publish = [*self.popbs, "merge", "--publish", *settings, str(entries)]
        reference_file = directory / "reference" / "popbs"
        reference_file.parent.mkdir()
        postmap = [str(self.postmap), f"hash:{reference_file}"]

        merges, publishes, reference = Series(), Series(), Series()
        at_once = Series()
        say(
            f"P3: merge + publish of {count(P3_GRANTS)} grants vs postmap, {self.runs}×"
        )
        for _ in range(self.runs):
            for leftover in directory.glob("popbs*"):
                leftover.unlink()
            at_once.runs.append(self.run(merge_publish))
            for leftover in directory.glob("popbs*"):
                leftover.unlink()
            merges.runs.append(self.run(merge))
            publishes.runs.append(self.run(publish))
            if not reference_file.exists():
                shutil.copyfile(grant_file, reference_file)
            reference.runs.append(self.run(postmap))
        granted = sum(
            1
            for line in grant_file.read_text().splitlines()
            if not line.startswith("#")
        )
        map_files = sorted(path.name for path in directory.glob("popbs.*"))
        totals = [
            merged.seconds + published.seconds
            for merged, published in zip(merges.runs, publishes.runs, strict=True)
        ]
        measured = statistics.median(totals)
        ratio = measured / reference.median
        self.rows.append(
            (
                f"P3 merge+publish, {count(P3_GRANTS)} grants",
                format_seconds(measured),
                f"{format_seconds(reference.median)} (postmap hash:)",
                f"{ratio:.2f}×",
                verdict(f"≤ {TARGET_P3}×", ratio <= TARGET_P3),
            )
        )
        one_ratio = at_once.median / reference.median
        self.rows.append(
            (
                "P3 in one process: merge --publish",
                format_seconds(at_once.median),
                f"{format_seconds(reference.median)} (postmap hash:)",
                f"{one_ratio:.2f}×",
                verdict(f"≤ {TARGET_P3}×", one_ratio <= TARGET_P3),
            )
        )
        check = (
            "as expected" if granted == P3_GRANTS else f"EXPECTED {count(P3_GRANTS)}"
        )
        self.notes.append(
            f"P3: chosen as `python -m popbs_tools merge --config EMPTY --map GRANTS "
            f"--state-dir DIR LINES` ({count(P3_GRANTS)} `IP TIME` lines, distinct "
            f"addresses, 10% IPv6, all within the TTL, into an empty grant file: "
            f"merge and prune) then `python -m popbs_tools publish ...` (map type "
            f"and postmap from postconf), timed together; merge "
            f"{format_seconds(merges.median)} + publish "
            f"{format_seconds(publishes.median)} (medians); reference spread "
            f"{reference.spread}. Result: {count(granted)} grants ({check}), "
            f"{', '.join(map_files) or 'NO MAP'}."
        )


def count(number: int) -> str:
    return f"{number:,}".replace(",", " ")


def ere_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in ".[]()*+?{}|^$\\" else char for char in text)


def verdict(target: str, met: bool) -> str:
    return f"{target} — {'met' if met else '**missed**'}"


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


# --- the report ----------------------------------------------------------------


def first_line(command: Sequence[str], env: Mapping[str, str]) -> str:
    try:
        done = subprocess.run(
            list(command), capture_output=True, text=True, env=dict(env), timeout=60
        )
    except OSError:
        return "not found"
    return (done.stdout.strip().splitlines() or ["?"])[0]


def machine(bench: Bench) -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory = "unknown"
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory = format_size(int(line.split()[1]) * KiB)
                break
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0))
    postfix = "not installed"
    if bench.postconf is not None:
        shown = first_line([str(bench.postconf), "-d", "mail_version"], bench.env)
        postfix = shown.partition("=")[2].strip() or shown
    revision = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], {})
    dirty = first_line(["git", "-C", str(REPO), "status", "--porcelain"], {})
    if dirty not in ("?", "not found"):
        revision += " + uncommitted changes"
    return [
        f"- CPU: {model}, {cores} cores ({usable} usable); memory {memory}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({bench.python}), click "
        f"{importlib.metadata.version('click')}",
        f"- {first_line(['grep', '--version'], bench.env)}",
        f"- Postfix {postfix} (postconf -d mail_version)",
        f"- popbs-tools at {revision}; popbs_tools/ copied at the start "
        f"(sha256 of its .py files {bench.fingerprint}) and run from the copy",
        f"- {bench.runs} runs of each command, alternating with its reference; medians",
    ]


def report(bench: Bench) -> None:
    print("## popbs speed benchmark\n")
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}\n")
    print("\n".join(machine(bench)) + "\n")
    print("| | measured | reference | ratio | target |")
    print("|---|---|---|---|---|")
    for row in bench.rows:
        print("| " + " | ".join(row) + " |")
    print()
    print(
        "popbs runs as `python -m popbs_tools` with the same interpreter as the "
        "references (the `popbs` console script starts that same interpreter)."
    )
    print()
    for note in bench.notes:
        print(f"- {note}")


def profile(bench: Bench) -> None:
    """cProfile one P1 scan; print the top functions by cumulative and own time."""
    size = min(PROFILE_SIZE, bench.size)
    log, _ = mail_log(bench.work, size, bench.seed)
    warm(log)
    path = bench.work / "scan.prof"
    say(f"profiling the scan of the {format_size(size)} log ...")
    command = [bench.python, "-m", "cProfile", "-o", str(path), "-m", "popbs_tools"]
    command += bench.scan_command(log)[3:]
    bench.run(command)
    print(f"\n### Profile of the P1 scan, {format_size(size)} log\n")
    print(f"`{shlex.join(['python', *command[1:]])}`\n")
    for order, title in (("cumulative", "cumulative time"), ("tottime", "own time")):
        print(f"Top {PROFILE_LINES} by {title}:\n\n```")
        stats = pstats.Stats(str(path), stream=sys.stdout)
        stats.strip_dirs().sort_stats(order).print_stats(PROFILE_LINES)
        print("```\n")


def parse_only(text: str) -> tuple[str, ...]:
    chosen = tuple(part.strip().upper() for part in text.split(",") if part.strip())
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"--only takes some of {','.join(BENCHMARKS)}, not {text!r}"
        )
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark popbs against its speed targets P1-P4.",
        epilog="See the module docstring (bench/bench.py) for what is measured.",
    )
    parser.add_argument(
        "--size", type=parse_size, help="log size for P1/P4, e.g. 100M (default 1G)"
    )
    parser.add_argument("--runs", type=int, help="runs of each command (default 5)")
    parser.add_argument(
        "--work", type=Path, default=DEFAULT_WORK, help="work dir (default bench/work)"
    )
    parser.add_argument(
        "--only", type=parse_only, default=BENCHMARKS, help="e.g. P1,P3 (default all)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="100M log and 3 runs, to iterate"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=f"also cProfile the scan of a {format_size(PROFILE_SIZE)} log",
    )
    parser.add_argument("--seed", type=int, default=1, help="log generator seed")
    args = parser.parse_args(argv)

    size = args.size or (QUICK_SIZE if args.quick else DEFAULT_SIZE)
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    if runs < 1:
        parser.error("--runs must be at least 1")
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("POPBS_")
    }
    bench = Bench(args.work.resolve(), size, runs, args.seed, env)
    bench.setup()
    steps: dict[str, Callable[[], None]] = {
        "P1": bench.p1,
        "P2": bench.p2,
        "P3": bench.p3,
        "P4": bench.p4,
    }
    for name in BENCHMARKS:
        if name not in args.only:
            continue
        if name in ("P2", "P3") and bench.postmap is None:
            bench.rows.append((name, "skipped", "postmap not found", "", ""))
            bench.notes.append(
                f"{name}: skipped; install Postfix (make system-packages)"
            )
            continue
        steps[name]()
    report(bench)
    if args.profile:
        profile(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
