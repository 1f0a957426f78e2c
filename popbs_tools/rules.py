"""The rule table: which program tags and message shapes prove a login.

Each rule names the tags a server logs under and a pattern that must match the
whole message. A rule's `role` says what a match proves: a login with its
client address (LOGIN), or, for servers that log the address when a connection
arrives and the login later without it, one piece of that session (ADDRESS,
SESSION_LOGIN, FORGET), which the scan pairs by process id (see correlate.py).
LOGOUT rules find the end of a session, which keeps the grant of a client
that stays connected (see tracking.py). FAILURE rules find failed logins: they
grant nothing and exist so that `popbs explain` can say why.

The comments name the source each format was read from.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from popbs_tools.lazyre import LazyPattern


class Role(Enum):
    LOGIN = "login"
    ADDRESS = "address"
    SESSION_LOGIN = "session login"
    FORGET = "end of session"
    LOGOUT = "logout"
    FAILURE = "failed login"


@dataclass(frozen=True)
class Fields:
    """What a rule read from a message."""

    ip: str
    user: str = ""
    session: str = ""


# Reads the Fields out of a match, or says why there are none.
Extractor = Callable[[re.Match[str]], Fields | str]

# Most servers ask for the password within seconds of the connection and drop
# an idle client well before this (RFC 1939 autologout is at least 10 minutes;
# qmail-popup waits 20).
DEFAULT_WINDOW = 20 * 60.0


@dataclass(frozen=True)
class Rule:
    name: str
    server: str
    # A tag ending in "(" stands for every tag that starts with it: Dovecot's
    # own log file starts a mail process's line with "imap(USER)<PID>...: ",
    # which the header parser reads as the program tag. Such a rule matches
    # the whole text, "TAG: MESSAGE".
    tags: frozenset[str]
    pattern: LazyPattern
    # Bytes that every line this rule matches contains: the scanner only
    # parses lines that hold one of them.
    markers: tuple[bytes, ...]
    once: tuple[str, ...] = ()
    protocol: str | None = None
    role: Role = Role.LOGIN
    # Rules of one family share process ids: an ADDRESS of one pairs with a
    # SESSION_LOGIN of another. Defaults to the server.
    family: str = ""
    # How long after its ADDRESS a SESSION_LOGIN may come, in seconds.
    window: float = DEFAULT_WINDOW
    extract: Extractor | None = None
    # Whether the pid in the line's header is the process the line is about.
    # It is not where a server's lines go through a logging process of its
    # own (Dovecot's log process, courierlogger): that pid is the same for
    # every session, so only a pid in the message may tell sessions apart.
    line_pid: bool = True


def _rule(
    name: str,
    server: str,
    tags: Iterable[str],
    pattern: str,
    markers: Iterable[bytes],
    once: Iterable[str] = (),
    protocol: str | None = None,
    role: Role = Role.LOGIN,
    family: str = "",
    window: float = DEFAULT_WINDOW,
    extract: Extractor | None = None,
    line_pid: bool = True,
) -> Rule:
    return Rule(
        name,
        server,
        frozenset(tags),
        LazyPattern(pattern, re.DOTALL),
        tuple(markers),
        tuple(once),
        protocol,
        role,
        family or server,
        window,
        extract,
        line_pid,
    )


_IP = r"[0-9A-Fa-f:.]+"
_IPV4 = r"\d{1,3}(?:\.\d{1,3}){3}"

# The scanner searches the log once per distinct marker, so the newer rules
# share a few short ones, most taken from the program tag: "pop" is in
# vpopmail, qmail-popup, popa3d, solid-pop3d, spop3d, gnu-pop3d, vm-pop3d,
# tpop3d and teapop; "Auth" in perdition's "Auth:" and Zimbra's "cmd=Auth;".
# (Messages such as "connect from" would not do: Postfix logs that for every
# SMTP client.)
_POP = b"pop"
_AUTH = b"Auth"

_DOVECOT_USER = LazyPattern(r"(?:^|, )user=<(?P<user>.*?)>(?=, |$)", re.DOTALL)
_DOVECOT_RIP = LazyPattern(rf"(?:^|, )rip=(?P<ip>{_IP})(?=, |$)")
_DOVECOT_SESSION = LazyPattern(r", session=<(?P<session>[\w+/=-]+)>")

# What a login process logs when the password was wrong; the login fields
# (client-supplied user name included) follow.
_DOVECOT_FAILED = (
    r"(?P<detail>(?:Disconnected|Aborted login|Login aborted)\b.*?"
    r"\((?:auth failed, \d+ attempts?(?: in \d+ secs)?|\d+ authentication "
    r"attempts?)\)(?: \(\w+\))?)(?:: (?P<fields>.*))?"
)
_DOVECOT_AUTH_FAILED = (
    rf"(?:Info: )?[\w-]+\((?P<user>.*),(?P<ip>{_IP})(?:,<[\w+/=-]*>)?\): "
    r"(?P<detail>Password mismatch.*|unknown user.*|pam_authenticate\(\) failed: .*)"
)
_DOVECOT_MAIL_SERVICES = ("imap", "pop3", "IMAP", "POP3", "imap-hibernate")
_DOVECOT_MAIL_END = (
    rf"(?P<service>{'|'.join(_DOVECOT_MAIL_SERVICES)})\((?P<user>[^()<>]*)\)"
    r"(?:<(?P<pid>\d+)><(?P<session>[\w+/=-]*)>)?: (?:Info: )?"
    r"(?:Disconnected|Logged out|Connection closed|Server shutting down)\b.*"
)
# "Login: ", "Logged in: " (2.4) and Cyrus's "login: " share these, and each
# marker costs the scanner a pass over the log.
_LOGIN_MARKERS = (b"ogin: ", b"Logged ")

_DOVECOT_END_MARKERS = (
    b"Disconnected",
    b"Logged ",
    b"Connection closed",
    b"Server shutting down",
)


def _dovecot_fields(match: re.Match[str]) -> Fields | str:
    fields = match["fields"] or ""
    rip = _DOVECOT_RIP.search(fields)
    if rip is None:
        return "no rip= field"
    user = _DOVECOT_USER.search(fields)
    session = _DOVECOT_SESSION.search(fields)
    return Fields(
        rip["ip"], user["user"] if user else "", session["session"] if session else ""
    )


# Zimbra's logging context (ZimbraLog.encodeArg): `key=value;` pairs, with a
# `;` inside a value doubled. The user agent and the names are client-supplied.
_ZIMBRA_PAIR = LazyPattern(r"(?P<key>[\w.-]+)=(?P<value>(?:[^;]|;;)*);")


def _zimbra_context(match: re.Match[str]) -> Fields | str:
    pairs: dict[str, str] = {}
    for pair in _ZIMBRA_PAIR.finditer(match["context"]):
        if pair["key"] in pairs:
            return f"{pair['key']}= occurs more than once: ambiguous"
        pairs[pair["key"]] = pair["value"].replace(";;", ";")
    # oip is the client the proxy (nginx, via the IMAP ID command) saw; ip is
    # then the proxy itself.
    ip = pairs.get("oip") or pairs.get("ip")
    if ip is None:
        return "no ip= or oip= in the context"
    return Fields(ip, match["user"])


def _perdition_fields(match: re.Match[str]) -> Fields | str:
    # A debugging perdition may add ` passwd="..."` after the id.
    _, found, user = match["ids"].rpartition(' authentication_id="')
    if not found:
        return "no authentication_id"
    return Fields(match["ip"], user.partition('" passwd="')[0].removesuffix('"'))


_COURIER_TAGS = (
    "pop3d",
    "pop3d-ssl",
    "imapd",
    "imapd-ssl",
    "courierpop3login",
    "courierpop3d",
    "courierimapd",
    "courierimaplogin",
)
_UW_TAGS = ("imapd", "ipop3d", "ipop2d", "in.imapd", "in.ipop3d")
_CYRUS_SERVICES = ("imap", "imaps", "pop3", "pop3s", "imapd", "pop3d")
_QPOPPER_TAGS = ("in.qpopper", "qpopper", "popper", "in.popper", "qpopper3", "")
_MAILUTILS_TAGS = ("gnu-pop3d", "pop3d", "gnu-imap4d", "imap4d")
_MAILUTILS_USER = r"[Uu]ser (?P<q>['`])?(?P<user>[^\s'`]+)(?(q)')"
_MAILUTILS_POP3D = (
    rf"{_MAILUTILS_USER} logged in with mailbox (?P<mq>['`])?[^\s'`]+(?(mq)')"
)
_PERDITION_TAGS = (
    "perdition",
    *(
        f"perdition.{name}"
        for name in ("imap", "imap4", "imap4s", "imaps", "pop3", "pop3s")
    ),
)

# The rules whose lines grant, alone or paired by process.
_GRANTING_RULES: tuple[Rule, ...] = (
    # Dovecot 1.0-2.3 "Login:", 2.4 "Logged in:", with key=value fields in the
    # order login_log_format_elements gives them. Under syslog the ident is
    # "dovecot" and the service comes first; in its own log_path the service
    # is the prefix and a level ("Info: ") may follow. The header's pid is
    # Dovecot's log process, shared by every session (line_pid=False).
    _rule(
        "dovecot",
        "dovecot",
        ["dovecot"],
        r"(?:Info: )?(?P<service>imap|pop3)-login: (?:Info: )?"
        r"(?:Login|Logged in): (?P<fields>(?:.*, )?rip=.*)",
        _LOGIN_MARKERS,
        once=("rip=",),
        extract=_dovecot_fields,
        line_pid=False,
    ),
    _rule(
        "dovecot-log-path",
        "dovecot",
        ["imap-login", "pop3-login"],
        r"(?:Info: )?(?:Login|Logged in): (?P<fields>(?:.*, )?rip=.*)",
        _LOGIN_MARKERS,
        once=("rip=",),
        extract=_dovecot_fields,
        line_pid=False,
    ),
    # Dovecot 0.99: "Login: alice [198.51.100.7]" under the imap-login ident.
    _rule(
        "dovecot-0.99",
        "dovecot",
        ["imap-login", "pop3-login"],
        rf"(?:Info: )?Login: (?P<user>.*) \[(?P<ip>{_IP})\]",
        [b"ogin: "],
        once=("[",),
        line_pid=False,
    ),
    _rule(
        "courier",
        "courier",
        _COURIER_TAGS,
        rf"LOGIN, user=(?P<user>[^,]*), ip=\[(?P<ip>{_IP})\]"
        r"(?:, port=\[\d+\])?(?:, protocol=\w+)?(?:, [\w-]+=\S*)*",
        [b"LOGIN, user="],
        once=("ip=[",),
        line_pid=False,
    ),
    # Cyrus: "login: host [ip] user mech User logged in SESSIONID=<...>".
    _rule(
        "cyrus",
        "cyrus",
        [*_CYRUS_SERVICES, *(f"cyrus/{name}" for name in _CYRUS_SERVICES)],
        rf"login: (?:\S+ )?\[(?P<ip>{_IP})\] (?P<user>\S+)(?: as admin)? \S+ "
        r"User logged in(?: .*)?",
        [b"ogin: "],
        once=("[", "User logged in"),
    ),
    # UW ipop3d/imapd: "Login user=x host=name [ip] nmsgs=1/1" and relatives.
    _rule(
        "uw",
        "uw",
        _UW_TAGS,
        r"(?:Admin )?(?:Login|Auth|APOP|Authenticated|Preauthenticated|Preauth) "
        rf"user=(?P<user>\S+) host=(?:\S+ )?\[(?P<ip>{_IP})\](?: .*)?",
        [b" user="],
        once=("user=", "host=", "["),
    ),
    # qpopper 2.x-4.x: the address is the last token, after the client-supplied
    # user name and the reverse-DNS name, so it is anchored at the end.
    _rule(
        "qpopper",
        "qpopper",
        _QPOPPER_TAGS,
        r"(?:\(v[\w.-]+\) )?POP login by user \"(?P<user>.*)\" at \(.*\) "
        rf"(?P<ip>{_IP})(?: \[[\w.]+:\d+\])?",
        [b"POP login by user"],
        protocol="pop3",
    ),
    # qpopper's "Stats:" line closes an authenticated session.
    _rule(
        "qpopper-stats",
        "qpopper",
        _QPOPPER_TAGS,
        r"(?:\(v[\w.-]+\) )?Stats: (?P<user>\S+) \d+ \d+ \d+ \d+ \S+ "
        rf"(?P<ip>{_IP})(?: \[[\w.]+:\d+\])?",
        [b"Stats: "],
        protocol="pop3",
    ),
    # vpopmail's vchkpw (checkpassword for qmail-popup) under openlog("vpopmail").
    # 5.4 names the service by local port ("vchkpw-pop3s") and the method;
    # "vchkpw-<port>" (unknown port, maybe SMTP AUTH), -smtp*, -submission and
    # -webmail are left out. The user is parse_email's checked user@domain, so
    # the address is what follows its only colon.
    _rule(
        "vchkpw",
        "vpopmail",
        ["vpopmail"],
        r"vchkpw-(?P<service>pop3s?|imaps?): "
        r"(?:\([\w-]+\) |system password )login success "
        rf"(?P<user>[^\s:]+):(?P<ip>{_IP})",
        [_POP],
    ),
    # vpopmail 5.0/5.2 vchkpw.c: "vchkpw: login success user@domain:ip".
    _rule(
        "vchkpw-5.0",
        "vpopmail",
        ["vpopmail"],
        rf"vchkpw: login success (?P<user>[^\s:]+):(?P<ip>{_IP})",
        [_POP],
        protocol="pop3",
    ),
    # tcpserver -v (ucspi-tcp 0.88 and ucspi-tcp6 tcpserver.c), in the child
    # that then execs the server: "pid N from IP", then "ok N local remote"
    # with remote "host:ip:ident:port". Host and ident come from the client's
    # DNS and ident server, so "ok" is only read for an IPv4 address, which a
    # colon in them cannot shift; the "pid" line is authoritative.
    _rule(
        "tcpserver-pid",
        "tcpserver",
        ["tcpserver"],
        rf"pid (?P<pid>\d+) from (?P<ip>{_IP})",
        [b"tcpserver: "],
        role=Role.ADDRESS,
    ),
    _rule(
        "tcpserver-ok",
        "tcpserver",
        ["tcpserver"],
        rf"ok (?P<pid>\d+) [^\s:]*:{_IP}:\d+ [^\s:]*:(?P<ip>{_IPV4}):[^\s:]*:\d+",
        [b"tcpserver: "],
        role=Role.ADDRESS,
    ),
    _rule(
        "tcpserver-end",
        "tcpserver",
        ["tcpserver"],
        r"(?:end|deny) (?P<pid>\d+) .*",
        [b"tcpserver: "],
        role=Role.FORGET,
    ),
    # The logging qmail-popup.c of s/qmail and Erwin Hoffmann's qmail patches
    # runs in the tcpserver child, so under tcpserver's pid, and logs once
    # checkpassword and qmail-pop3d have exited: "pid N Accept::AUTH::User
    # P:POP3 S:ip:host ?~ 'user'". The address is tcpserver's TCPREMOTEIP,
    # read directly only when IPv4, since the host after it is the client's
    # DNS name (a name with a space fails the pattern). As the line closes the
    # session, it may come long after tcpserver's.
    _rule(
        "qmail-popup",
        "qmail-pop3d",
        ["qmail-popup"],
        r"pid (?P<pid>\d+) Accept::AUTH::\w+ P:(?P<service>POP3S?) "
        rf"S:(?P<ip>{_IPV4}):[^ ]* \?[~=] '(?P<user>.*)'",
        [_POP],
    ),
    _rule(
        "qmail-popup-session",
        "qmail-pop3d",
        ["qmail-popup"],
        r"pid (?P<pid>\d+) Accept::AUTH::\w+ P:(?P<service>POP3S?) "
        r"S:[^ ]* \?[~=] '(?P<user>.*)'",
        [_POP],
        role=Role.SESSION_LOGIN,
        family="tcpserver",
        window=2 * 3600.0,
    ),
    # popa3d's standalone.c logs "Session from IP" (numeric) in the session's
    # process; pop_root.c's log_pop_auth logs the outcome in the same process.
    _rule(
        "popa3d-session",
        "popa3d",
        ["popa3d"],
        rf"Session from (?P<ip>{_IP})",
        [_POP],
        role=Role.ADDRESS,
    ),
    _rule(
        "popa3d",
        "popa3d",
        ["popa3d"],
        r"Authentication passed for (?P<user>.+)",
        [_POP],
        protocol="pop3",
        role=Role.SESSION_LOGIN,
    ),
    _rule(
        "popa3d-failed",
        "popa3d",
        ["popa3d"],
        r"Authentication failed for .+|Didn't attempt authentication",
        [_POP],
        role=Role.FORGET,
    ),
    # solid-pop3d main.c: with LOG_EXTEND the outcome ends in " - " and the
    # address, or "name (address)" with RESOLVE_HOSTNAME; with LOG_CONNECT only,
    # "connect from" comes first and "user X authenticated" carries none.
    # "user X authenticated" is logged before the root check, so root is left
    # out ("root login not allowed" follows).
    _rule(
        "solid-pop3d",
        "solid-pop3d",
        ["solid-pop3d", "spop3d"],
        r"(?:mapped )?user (?P<user>(?!root )\S+) authenticated(?: through APOP)? - "
        rf"(?:(?P<host>[^\s()]+) \()?(?P<ip>{_IP})(?(host)\))",
        [_POP],
        protocol="pop3",
    ),
    _rule(
        "solid-pop3d-connect",
        "solid-pop3d",
        ["solid-pop3d", "spop3d"],
        rf"connect from (?:(?P<host>[^\s()]+) \()?(?P<ip>{_IP})(?(host)\))",
        [_POP],
        role=Role.ADDRESS,
    ),
    _rule(
        "solid-pop3d-session",
        "solid-pop3d",
        ["solid-pop3d", "spop3d"],
        r"(?:mapped )?user (?P<user>(?!root )\S+) authenticated(?: through APOP)?",
        [_POP],
        protocol="pop3",
        role=Role.SESSION_LOGIN,
    ),
    _rule(
        "solid-pop3d-failed",
        "solid-pop3d",
        ["solid-pop3d", "spop3d"],
        r"(?:APOP )?authentication failed.*|root login not allowed.*",
        [_POP],
        role=Role.FORGET,
    ),
    # GNU Mailutils: pop3d.c 0.x logs "connect from IP" (imap4d 1.x "Connect
    # from IP") after "Incoming connection opened"; user.c logs the login
    # without the address, quoting names as 'x', `x' or not at all, and
    # refuses a user name with a space. Mailutils 2.x-3.x log no client
    # address: those logins are not found.
    _rule(
        "mailutils-connect",
        "mailutils",
        _MAILUTILS_TAGS,
        rf"[Cc]onnect from (?P<ip>{_IP})",
        [_POP, b"imap4d"],
        role=Role.ADDRESS,
    ),
    _rule(
        "mailutils-opened",
        "mailutils",
        _MAILUTILS_TAGS,
        r"[Ii]ncoming connection opened",
        [_POP, b"imap4d"],
        role=Role.FORGET,
    ),
    # The form pop-before-smtp's configuration quotes for gnu-pop3d, with the
    # address at the end.
    _rule(
        "mailutils-from",
        "mailutils",
        _MAILUTILS_TAGS,
        rf"{_MAILUTILS_POP3D} from (?P<ip>{_IP})",
        [_POP, b"imap4d"],
    ),
    _rule(
        "mailutils-pop3d",
        "mailutils",
        _MAILUTILS_TAGS,
        rf"{_MAILUTILS_POP3D}(?: \(\d+ (?:msgs|messages?)\))?",
        [_POP, b"imap4d"],
        role=Role.SESSION_LOGIN,
    ),
    _rule(
        "mailutils-imap4d",
        "mailutils",
        _MAILUTILS_TAGS,
        rf"{_MAILUTILS_USER} logged in \(source: [^)]*\)",
        [_POP, b"imap4d"],
        role=Role.SESSION_LOGIN,
    ),
    # tpop3d connection.c names a client "[fd]ip/domain" (inet_ntoa, so IPv4);
    # the main loop logs "fork_child: ID: began session for `user' with
    # driver; child PID is N" once authenticated.
    _rule(
        "tpop3d",
        "tpop3d",
        ["tpop3d"],
        rf"fork_child: \[\d+\](?P<ip>{_IPV4})(?:/[^\s:]*)?: "
        r"began session for `(?P<user>.*)' with \S+; child PID is \d+",
        [_POP],
        protocol="pop3",
    ),
    # teapop pop_auth.c: "Successful login for user[@domain] [SERVER-IP] from
    # host [CLIENT-IP]": the server's own address comes first, the client's
    # last.
    _rule(
        "teapop",
        "teapop",
        ["teapop", "teapop_ssl"],
        rf"Successful login for (?P<user>.+) \[{_IP}\] from \S+ \[(?P<ip>{_IP})\]",
        [_POP],
        once=("] from ",),
        protocol="pop3",
    ),
    # vm-pop3d.c logs "Connect from IP" (inet_ntoa) in the process that serves
    # the connection, or "Connection opened" when it has none; user.c and
    # apop.c log the login without the address.
    _rule(
        "vm-pop3d-connect",
        "vm-pop3d",
        ["vm-pop3d"],
        rf"Connect from (?P<ip>{_IP})",
        [_POP],
        role=Role.ADDRESS,
    ),
    _rule(
        "vm-pop3d-opened",
        "vm-pop3d",
        ["vm-pop3d"],
        r"(?:Incoming connection|Connection) opened",
        [_POP],
        role=Role.FORGET,
    ),
    _rule(
        "vm-pop3d",
        "vm-pop3d",
        ["vm-pop3d"],
        r"User '(?P<user>[^']*)'(?: of '[^']*')? logged in",
        [_POP],
        protocol="pop3",
        role=Role.SESSION_LOGIN,
    ),
    _rule(
        "vm-pop3d-apop",
        "vm-pop3d",
        ["vm-pop3d"],
        r"User (?P<user>\S+) logged in with (?:shared )?mailbox \S+",
        [_POP],
        protocol="pop3",
        role=Role.SESSION_LOGIN,
    ),
    # perdition.c 1.17 and later: "Auth: ip:port->ip:port client-secure=...
    # authorisation_id=... authentication_id="user" server="host:port"
    # protocol=P server-secure=... status="ok"". The ids are the client's and
    # may hold quotes, so they are one span, and the real status is the last
    # field; ManageSieve is left out.
    _rule(
        "perdition",
        "perdition",
        _PERDITION_TAGS,
        rf"Auth: (?P<ip>{_IP}):\d+->\S+ client-secure=\w+ "
        r"(?P<ids>authorisation_id=.*) server=\"[^\"]*\" "
        r"protocol=(?P<service>POP3S?|IMAP4S?) server-secure=\w+ status=\"ok\"",
        [_AUTH],
        once=('status="',),
        extract=_perdition_fields,
    ),
    # Older perdition.c (2002): "Auth: ip->ip user="x" server=... status="ok"".
    _rule(
        "perdition-old",
        "perdition",
        _PERDITION_TAGS,
        rf"Auth: (?P<ip>{_IPV4})->{_IPV4} user=\"(?P<user>.*)\" "
        r"server=\"[^\"]*\" port=\"[^\"]*\" status=\"ok\"",
        [_AUTH],
        once=('status="',),
    ),
    # Zimbra's mailbox.log and audit.log (log4j, no syslog tag): "[context]
    # security - cmd=Auth; account=x; protocol=imap;", and "error=...;" after
    # it when the login failed.
    _rule(
        "zimbra",
        "zimbra",
        [""],
        r"\[(?P<context>(?:[\w.-]+=(?:[^;]|;;)*;)*)\] security - cmd=Auth; "
        r"account=(?P<user>[^;]*); protocol=(?P<service>imap|pop3);",
        [_AUTH],
        extract=_zimbra_context,
    ),
)

# Failed logins, for `popbs explain`: they grant nothing, and the scanner needs
# no marker for them. In a rule's pattern, `detail` names the failure.
_FAILURE_RULES: tuple[Rule, ...] = (
    # Dovecot login process: 1.x "Aborted login (1 authentication attempts)"
    # and "Disconnected (auth failed, 2 attempts)", 2.3 "Disconnected:
    # Connection closed (auth failed, 1 attempts in 2 secs)", 2.4 "Login
    # aborted: ... (auth failed, ...) (auth_failed)", then the login fields.
    _rule(
        "dovecot-failed",
        "dovecot",
        ["dovecot"],
        rf"(?:Info: )?(?P<service>imap|pop3)-login: (?:Info: )?{_DOVECOT_FAILED}",
        [],
        role=Role.FAILURE,
        extract=_dovecot_fields,
    ),
    _rule(
        "dovecot-failed-log-path",
        "dovecot",
        ["imap-login", "pop3-login"],
        rf"(?:Info: )?{_DOVECOT_FAILED}",
        [],
        role=Role.FAILURE,
        extract=_dovecot_fields,
    ),
    # Dovecot's auth process and workers (passdb "pam", "passwd-file", "sql",
    # ...): "auth-worker(304): pam(alice,198.51.100.44): pam_authenticate()
    # failed: ...", "auth: passwd-file(alice,198.51.100.44,<session>):
    # Password mismatch", "... unknown user".
    _rule(
        "dovecot-auth-failed",
        "dovecot",
        ["dovecot"],
        rf"(?:Info: )?auth(?:-worker\(\d+\))?: {_DOVECOT_AUTH_FAILED}",
        [],
        role=Role.FAILURE,
    ),
    _rule(
        "dovecot-auth-failed-log-path",
        "dovecot",
        ["auth", "auth-worker("],
        rf"(?:auth-worker\(\d+\): )?{_DOVECOT_AUTH_FAILED}",
        [],
        role=Role.FAILURE,
    ),
    # Courier imaplogin/pop3login: "LOGIN FAILED, user=x, ip=[ip]", newer
    # ones "LOGIN FAILED, method=PLAIN, ip=[ip]".
    _rule(
        "courier-failed",
        "courier",
        _COURIER_TAGS,
        r"(?P<detail>LOGIN FAILED), (?:user=(?P<user>.*), |method=[\w-]+, )?"
        rf"ip=\[(?P<ip>{_IP})\].*",
        [],
        role=Role.FAILURE,
    ),
    # Cyrus: "badlogin: host [ip] mech [SASL(-13): authentication failure:
    # ...]" (2.5 and later name the user before the reason).
    _rule(
        "cyrus-failed",
        "cyrus",
        [*_CYRUS_SERVICES, *(f"cyrus/{name}" for name in _CYRUS_SERVICES)],
        rf"badlogin: (?:\S+ )?\[(?P<ip>{_IP})\] (?P<detail>.*)",
        [],
        role=Role.FAILURE,
    ),
    # UW imapd/ipop3d (imap-2007 imapd.c, ipop3d.c): "Login failed user=x
    # auth=y host=name [ip]", "Login disabled ...", and for AUTHENTICATE
    # "AUTHENTICATE PLAIN failure host=name [ip]" without the user.
    _rule(
        "uw-failed",
        "uw",
        _UW_TAGS,
        r"(?P<detail>Login (?:failed|disabled)|Excessive login (?:failures|attempts)) "
        rf"user=(?P<user>\S*)(?: auth=\S*)? host=(?:\S+ )?\[(?P<ip>{_IP})\](?: .*)?",
        [],
        role=Role.FAILURE,
    ),
    _rule(
        "uw-authenticate-failed",
        "uw",
        _UW_TAGS,
        r"(?P<detail>AUTHENTICATE \S+ failure|(?:Excessive a|A)uthentication "
        rf"failures?) host=(?:\S+ )?\[(?P<ip>{_IP})\](?: .*)?",
        [],
        role=Role.FAILURE,
    ),
    # qpopper's pop_log: "user at host (ip): -ERR [AUTH] Password supplied for
    # "user" is incorrect." (older ones without "[AUTH]").
    _rule(
        "qpopper-failed",
        "qpopper",
        _QPOPPER_TAGS,
        rf"(?:\(v[\w.-]+\) )?(?P<user>.*) at \S+ \((?P<ip>{_IP})\): -ERR "
        r"(?P<detail>\[AUTH\] .*|Password supplied for .* is incorrect\.?)",
        [],
        role=Role.FAILURE,
    ),
    # vpopmail's vchkpw: "vchkpw-pop3: password fail user@domain:ip", "...
    # vpopmail user not found ...", with the password in parentheses when
    # vpopmail logs it; the address is what follows the last colon.
    _rule(
        "vchkpw-failed",
        "vpopmail",
        ["vpopmail"],
        r"vchkpw(?:-[\w-]+)?: (?P<detail>password fail|vpopmail user not found|"
        r"user has no password|login failed|\w+ access denied)(?: .*)? "
        rf"(?P<user>[^\s:]+):(?P<ip>{_IP})",
        [],
        role=Role.FAILURE,
    ),
    # perdition: any status but "ok" in the last field; the older format has
    # no port after the IPv4 address.
    _rule(
        "perdition-failed",
        "perdition",
        _PERDITION_TAGS,
        rf"Auth: (?P<ip>{_IPV4}|{_IP}(?=:\d+->))(?::\d+)?->\S+ .* "
        r"status=\"(?P<detail>(?!ok\")[^\"]*)\"",
        [],
        role=Role.FAILURE,
    ),
    # GNU Mailutils user.c: "User 'x': authentication failed".
    _rule(
        "mailutils-failed",
        "mailutils",
        _MAILUTILS_TAGS,
        rf"{_MAILUTILS_USER}: (?P<detail>authentication failed)",
        [],
        role=Role.FAILURE,
    ),
    # tpop3d connection.c: "connection_do: client `[fd]ip/domain': username
    # `x': N authentication failures".
    _rule(
        "tpop3d-failed",
        "tpop3d",
        ["tpop3d"],
        rf"connection_do: client `\[\d+\](?P<ip>{_IPV4})(?:/[^\s:']*)?': "
        r"username `(?P<user>.*)': (?P<detail>\d+ authentication failures?)",
        [],
        role=Role.FAILURE,
    ),
    # teapop pop_auth.c: "Failed login for user [server-ip] from host [ip]".
    _rule(
        "teapop-failed",
        "teapop",
        ["teapop", "teapop_ssl"],
        rf"(?P<detail>Failed login) for (?P<user>.+) \[{_IP}\] from \S+ "
        rf"\[(?P<ip>{_IP})\]",
        [],
        role=Role.FAILURE,
    ),
    # Zimbra: the login line with "error=...;" after the protocol.
    _rule(
        "zimbra-failed",
        "zimbra",
        [""],
        r"\[(?P<context>(?:[\w.-]+=(?:[^;]|;;)*;)*)\] security - cmd=Auth; "
        r"account=(?P<user>[^;]*); protocol=(?P<service>imap|pop3); "
        r"error=(?P<detail>(?:[^;]|;;)*);",
        [],
        role=Role.FAILURE,
        extract=_zimbra_context,
    ),
)

# Ends of POP3/IMAP sessions, for the clients that stay connected.
_LOGOUT_RULES: tuple[Rule, ...] = (
    # Dovecot mail processes (imap, pop3; imap-hibernate for a hibernated
    # IDLE client) log under mail_log_prefix, "%s(%u)" until 2.2 and
    # "%s(%u)<%{pid}><%{session}>" from 2.3 ("IMAP(user)" in 1.x). How they end
    # (imap-client.c, pop3-client.c, cmd-idle.c, imap-hibernate/imap-client.c):
    # "Disconnected: Logged out", "Logged out", "Disconnected for
    # inactivity", "Disconnected in IDLE", "Connection closed (IDLE running
    # for ...)", "Server shutting down", then the logout statistics. Dovecot
    # logs through its log process, so the header's pid is that process's.
    _rule(
        "dovecot-logout",
        "dovecot",
        ["dovecot"],
        rf"(?:Info: )?{_DOVECOT_MAIL_END}",
        _DOVECOT_END_MARKERS,
        role=Role.LOGOUT,
        line_pid=False,
    ),
    # The same in Dovecot's own log file, where the prefix reads as the tag.
    _rule(
        "dovecot-logout-log-path",
        "dovecot",
        [f"{service}(" for service in _DOVECOT_MAIL_SERVICES],
        _DOVECOT_MAIL_END,
        _DOVECOT_END_MARKERS,
        role=Role.LOGOUT,
        line_pid=False,
    ),
    # Courier imapd (imaptoken.c bye_msg, mainloop.c) and pop3d
    # (pop3dserver.c acctout), through courierlogger: "LOGOUT, user=x,
    # ip=[ip], headers=0, body=0, rcvd=50, sent=400, time=5", TIMEOUT,
    # DISCONNECTED, "I/O error disconnect", "Disconnected during shutdown by
    # signal". The pid is courierlogger's, so sessions are told apart by user
    # and address.
    _rule(
        "courier-logout",
        "courier",
        _COURIER_TAGS,
        r"(?:LOGOUT|TIMEOUT|DISCONNECTED|I/O error disconnect|Disconnected during "
        rf"shutdown by signal), user=(?P<user>[^,]*), ip=\[(?P<ip>{_IP})\]"
        r"(?:, port=\[\d+\])?(?:, [\w-]+=\S*)*",
        [b" user="],
        once=("ip=[",),
        line_pid=False,
        role=Role.LOGOUT,
    ),
    # UW imapd/ipop3d (imap-2007 imapd.c, ipop3d.c): "Logout user=x host=name
    # [ip]" (ipop3d adds "nmsgs=N ndele=N"), "Autologout", "Killed (lost
    # mailbox lock)", "Kiss of death", "Hangup", "Killed", "Fatal mailbox
    # error", and inerror()'s "Command stream end of file, while reading line".
    # User "???" is a client that never logged in. inetd runs a process per
    # connection, so the pid is the session's.
    _rule(
        "uw-logout",
        "uw",
        _UW_TAGS,
        r"(?:Logout|Autologout|Killed(?: \(lost mailbox lock\))?|Kiss of death|"
        r"Hangup|Fatal mailbox error|[A-Z][\w ]*, while [\w ]+) "
        rf"user=(?!\?\?\? )(?P<user>\S+) host=(?:\S+ )?\[(?P<ip>{_IP})\](?: .*)?",
        [b" user="],
        role=Role.LOGOUT,
    ),
)

BUILTIN_RULES: tuple[Rule, ...] = _GRANTING_RULES + _FAILURE_RULES + _LOGOUT_RULES
