"""A real Dovecot and a real Postfix on loopback, for end-to-end tests.

Each server runs as a child process in the foreground from its own config in a
directory the test owns; nothing under /etc is read or changed, and the system
services are never started. Both listen only on 127.0.0.1 and ::1, on free
high ports picked at start.

To let one loopback client stand in for many remote clients, both servers trust
loopback as a proxy: Dovecot takes the client address from POP3 ``XCLIENT`` or
the IMAP ``ID`` command (``login_trusted_networks``), Postfix from SMTP
``XCLIENT`` (``smtpd_authorized_xclient_hosts``).

Postfix never delivers or relays anything: every transport is ``discard``,
master.cf runs no queue manager and no delivery agent, and DATA is refused, so
a test can only ever learn the answer to RCPT TO.

The servers need root (Dovecot and Postfix's master start as root and drop
privileges), and their unprivileged processes (dovecot, dovenull, nobody,
postfix) must be able to traverse every directory above the files they open.
pytest's tmp_path lives under 0700 directories, so the servers' files go in a
directory of their own from `make_server_root` instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Self

DOVECOT = Path("/usr/sbin/dovecot")
POSTFIX = Path("/usr/sbin/postfix")
POSTMAP = Path("/usr/sbin/postmap")
POSTCONF = Path("/usr/sbin/postconf")
POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")

LOOPBACK = ("127.0.0.1", "::1")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 10.0

DEFAULT_USERS = {"alice": "secret", "bob": "secret"}
# Mail processes run as this user; it must not be root, dovenull or dovecot.
MAIL_USER = "nobody"
POSTFIX_HOSTNAME = "popbs-test.example.org"

# The file postmap builds for each map type, as a suffix of the source's name.
MAP_SUFFIXES = {"hash": ".db", "btree": ".db", "cdb": ".cdb", "lmdb": ".lmdb"}


class ServerError(RuntimeError):
    """A server did not start, stop or answer the way the harness expects."""


def missing_requirements() -> list[str]:
    """Why the servers cannot run here; empty when they can."""
    missing = [
        f"{path} is missing"
        for path in (DOVECOT, POSTFIX, POSTMAP, POSTCONF, POSTFIX_MASTER)
        if not path.exists()
    ]
    if os.geteuid() != 0:
        missing.append("Dovecot and Postfix's master must be started as root")
    return missing


def make_server_root() -> Path:
    """Create a private directory for the servers' files.

    Mode 0711 lets the servers' unprivileged users traverse it without being
    able to list it; the directories below are created by the servers' classes.
    """
    root = Path(tempfile.mkdtemp(prefix="popbs-servers-"))
    root.chmod(0o711)
    return root


def remove_server_root(root: Path, keep_logs_in: Path | None = None) -> None:
    """Delete a server root, first copying its *.log files for a post-mortem."""
    if keep_logs_in is not None:
        for log in root.rglob("*.log"):
            if log.is_file():
                shutil.copy2(log, keep_logs_in / f"{log.parent.name}-{log.name}")
    shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    """A TCP port that is free on both 127.0.0.1 and ::1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as v6:
            v6.bind(("::1", 0))
            port = int(v6.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as v4:
                try:
                    v4.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise ServerError("no TCP port is free on both 127.0.0.1 and ::1")


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a text file, or a note that it does not exist."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


def _connect(host: str, port: int) -> socket.socket:
    if host not in LOOPBACK:
        # The harness must never talk to anything but its own servers.
        raise ValueError(f"refusing to connect to {host}: loopback only")
    return socket.create_connection((host, port), timeout=IO_TIMEOUT)


class _LineClient:
    """A CRLF line protocol client, just enough for POP3 and IMAP logins."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = _connect(host, port)
        self.reader = self.sock.makefile("rb")
        self.transcript: list[str] = []

    def send(self, line: str) -> None:
        self.transcript.append(f"C: {line}")
        self.sock.sendall(line.encode() + b"\r\n")

    def receive(self) -> str:
        raw = self.reader.readline()
        if not raw:
            raise ServerError("server closed the connection\n" + self.dialogue())
        line = raw.decode(errors="replace").rstrip("\r\n")
        self.transcript.append(f"S: {line}")
        return line

    def dialogue(self) -> str:
        return "\n".join(self.transcript)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def _session_members(session: int) -> list[int]:
    """PIDs of processes in the given session, other than this process."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        # A zombie has exited already; it only waits for its parent to reap it.
        if int(fields[3]) == session and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _postfix_daemons_of(config_dir: Path) -> list[int]:
    """PIDs of Postfix daemons started for config_dir, found by environment.

    Postfix's master passes MAIL_CONFIG on to every daemon it starts.
    """
    found = []
    marker = b"\0MAIL_CONFIG=" + str(config_dir).encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            exe = os.readlink(entry / "exe")
            environ = b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if exe.startswith(str(POSTFIX_MASTER.parent)) and marker in environ:
            found.append(int(entry.name))
    return found


class _ForegroundServer:
    """A server's master process, run in the foreground in a session of its own.

    The own session (start_new_session) gives every process the master forks
    one session ID, the master's PID, so stragglers can be found by it; it also
    keeps Postfix's master, which signals its whole process group on SIGTERM,
    from signalling pytest.
    """

    name = "server"
    # Where to look when the master dies before it has a log of its own.
    startup_hint = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        # Goes into the server's greeting, so that the harness can tell its own
        # server from another one that happens to have the port.
        self.token = f"popbs-test-{secrets.token_hex(4)}"
        self.process: subprocess.Popen[bytes] | None = None
        self.output_path = directory / f"{self.name}.out"
        # PIDs that outlived the master and had to be killed by stop().
        self.stragglers: list[int] = []

    def log_tail(self, lines: int = 40) -> str:
        raise NotImplementedError

    def _spawn(self, argv: list[str]) -> None:
        with open(self.output_path, "ab") as output:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.directory,
            )

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ServerError(
                f"{self.name} exited with status {self.process.returncode}"
                f"{self.startup_hint}\n"
                f"--- {self.output_path.name}:\n{tail(self.output_path)}\n"
                f"--- log:\n{self.log_tail()}"
            )

    def check_greeting(self, line: str, dialogue: str = "") -> None:
        """Raise unless line is this server's greeting (it carries the token)."""
        if self.token not in line:
            raise ServerError(
                f"not the {self.name} started for this test: greeting {line!r} "
                f"lacks {self.token}\n{dialogue}"
            )

    def _wait_for_greeting(self, host: str, port: int, greeting: bytes) -> None:
        """Poll until the server answers with greeting, within START_TIMEOUT."""
        deadline = time.monotonic() + START_TIMEOUT
        last_error = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                with _connect(host, port) as sock:
                    sock.settimeout(2.0)
                    line = sock.makefile("rb").readline()
                if line.startswith(greeting):
                    self.check_greeting(line.decode(errors="replace"))
                    return
                last_error = f"unexpected greeting {line!r}"
            except OSError as error:
                last_error = str(error)
            time.sleep(0.05)
        raise ServerError(
            f"{self.name} did not answer on [{host}]:{port} within "
            f"{START_TIMEOUT:.0f}s ({last_error})\n{self.log_tail()}"
        )

    def stop(self) -> list[int]:
        """Stop the master by its PID, then kill any of its processes left over.

        Returns the PIDs that outlived the master (normally none).
        """
        process, self.process = self.process, None
        if process is None:
            return []
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        # The master has signalled its processes; give them time to exit.
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._leftovers(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        stragglers = self._leftovers(process.pid)
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stragglers = stragglers
        return stragglers

    def _leftovers(self, master_pid: int) -> list[int]:
        """Processes of this server still running after its master is gone."""
        return _session_members(master_pid)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def dovecot_config(
    *,
    directory: Path,
    pop3_port: int,
    imap_port: int,
    mail_uid: int,
    mail_gid: int,
    greeting: str = "Dovecot ready.",
) -> str:
    """A complete, standalone dovecot.conf (no includes from /etc/dovecot)."""
    return f"""\
# Written by tests/servers.py for one test run; not for production.
protocols = pop3 imap
listen = 127.0.0.1, ::1
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
info_log_path = {directory}/dovecot.log
# RFC 3164 style, local time: what popbs reads from syslog files too.
log_timestamp = "%b %d %H:%M:%S "
# Logs "Password mismatch" lines, which popbs must not mistake for logins.
auth_verbose = yes
# The default 2 s penalty per failed login would only slow the tests down.
auth_failure_delay = 0

login_greeting = {greeting}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
# The test client on loopback speaks for the addresses it is testing with:
# POP3 XCLIENT and IMAP ID x-originating-ip are accepted only from here.
login_trusted_networks = 127.0.0.0/8 ::1

default_login_user = dovenull
default_internal_user = dovecot
first_valid_uid = {mail_uid}
first_valid_gid = {mail_gid}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN {directory}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={directory}/mail/%u
}}
mail_location = maildir:~/Maildir

service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


class DovecotServer(_ForegroundServer):
    """Dovecot serving POP3 and IMAP on loopback, logging to its own file."""

    name = "dovecot"

    def __init__(
        self,
        directory: Path,
        users: Mapping[str, str] = DEFAULT_USERS,
        mail_user: str = MAIL_USER,
    ) -> None:
        super().__init__(directory)
        self.users = dict(users)
        self.mail_user = pwd.getpwnam(mail_user)
        self.config_path = directory / "dovecot.conf"
        self.log_path = directory / "dovecot.log"
        self.pop3_port = 0
        self.imap_port = 0

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def _prepare(self) -> None:
        uid, gid = self.mail_user.pw_uid, self.mail_user.pw_gid
        for sub in ("", "run", "state", "mail"):
            (self.directory / sub).mkdir(mode=0o755, exist_ok=True)
            (self.directory / sub).chmod(0o755)
        # The mail processes run as the mail user and chdir to the home first.
        for user in self.users:
            home = self.directory / "mail" / user
            home.mkdir(mode=0o700, exist_ok=True)
            os.chown(home, uid, gid)
        # Read by the auth process, which runs as the dovecot user.
        passwd = self.directory / "passwd"
        passwd.write_text(
            "".join(f"{user}:{{PLAIN}}{pw}\n" for user, pw in self.users.items())
        )
        passwd.chmod(0o644)
        self.pop3_port = free_port()
        self.imap_port = free_port()
        self.config_path.write_text(
            dovecot_config(
                directory=self.directory,
                pop3_port=self.pop3_port,
                imap_port=self.imap_port,
                mail_uid=uid,
                mail_gid=gid,
                greeting=f"{self.token} ready.",
            )
        )

    def start(self) -> Self:
        self._prepare()
        checked = subprocess.run(
            [str(DOVECOT), "-c", str(self.config_path), "-n"],
            capture_output=True,
            text=True,
        )
        if checked.returncode != 0:
            raise ServerError(f"dovecot rejects its config:\n{checked.stderr}")
        self._spawn([str(DOVECOT), "-F", "-c", str(self.config_path)])
        for host in LOOPBACK:
            self._wait_for_greeting(host, self.pop3_port, b"+OK")
            self._wait_for_greeting(host, self.imap_port, b"* OK")
        return self

    def pop3_login(
        self,
        user: str,
        password: str,
        as_addr: str,
        as_port: int = 40110,
        host: str = "127.0.0.1",
    ) -> bool:
        """Log in over POP3 posing as as_addr; True if the login succeeded.

        A refused password gives False; anything else unexpected raises.
        """
        client = _LineClient(host, self.pop3_port)
        try:
            greeting = client.receive()
            self.check_greeting(greeting, client.dialogue())
            if "[XCLIENT]" not in greeting:
                raise ServerError(
                    "Dovecot offers no XCLIENT to this client: is it in "
                    "login_trusted_networks?\n" + client.dialogue()
                )
            client.send(f"XCLIENT ADDR={as_addr} PORT={as_port}")
            self._expect(client, client.receive().startswith("+OK"))
            client.send(f"USER {user}")
            self._expect(client, client.receive().startswith("+OK"))
            client.send(f"PASS {password}")
            reply = client.receive()
            if reply.startswith("-ERR [AUTH]"):
                return False
            self._expect(client, reply.startswith("+OK"))
            return True
        finally:
            try:
                client.send("QUIT")
                client.receive()
            except (OSError, ServerError):
                pass
            client.close()

    def imap_login(
        self,
        user: str,
        password: str,
        as_addr: str,
        as_port: int = 40143,
        host: str = "127.0.0.1",
    ) -> bool:
        """Log in over IMAP posing as as_addr; True if the login succeeded."""
        client = _LineClient(host, self.imap_port)
        try:
            reply = self._imap_login(client, user, password, as_addr, as_port)
            if reply.startswith("a2 NO [AUTHENTICATIONFAILED]"):
                return False
            self._expect(client, reply.startswith("a2 OK"))
            return True
        finally:
            try:
                client.send("a3 LOGOUT")
                self._tagged(client, "a3")
            except (OSError, ServerError):
                pass
            client.close()

    def _imap_login(
        self, client: _LineClient, user: str, password: str, as_addr: str, as_port: int
    ) -> str:
        """Greeting, ID with the posed address, LOGIN: the LOGIN's reply."""
        greeting = client.receive()
        self.check_greeting(greeting, client.dialogue())
        self._expect(client, greeting.startswith("* OK"))
        # Dovecot takes the forwarded address only before authentication.
        client.send(
            f'a1 ID ("x-originating-ip" "{as_addr}" "x-originating-port" "{as_port}")'
        )
        self._expect(client, self._tagged(client, "a1").startswith("a1 OK"))
        client.send(f'a2 LOGIN "{user}" "{password}"')
        return self._tagged(client, "a2")

    @contextlib.contextmanager
    def imap_session(
        self, user: str, password: str, as_addr: str, host: str = "127.0.0.1"
    ) -> Iterator[None]:
        """Stay logged in over IMAP, posing as as_addr, until the block ends."""
        client = _LineClient(host, self.imap_port)
        try:
            reply = self._imap_login(client, user, password, as_addr, 40144)
            self._expect(client, reply.startswith("a2 OK"))
            yield
            client.send("a3 LOGOUT")
            self._tagged(client, "a3")
        finally:
            client.close()

    @staticmethod
    def _tagged(client: _LineClient, tag: str) -> str:
        """Read past untagged responses to the reply tagged tag."""
        while True:
            line = client.receive()
            if line.startswith(f"{tag} "):
                return line

    def _expect(self, client: _LineClient, ok: bool) -> None:
        if not ok:
            raise ServerError(
                f"unexpected reply from Dovecot\n{client.dialogue()}\n"
                f"--- dovecot.log:\n{self.log_tail()}"
            )

    def wait_for_log(self, *needles: str, timeout: float = 5.0) -> str:
        """Wait until every needle occurs in the log; return the log.

        Dovecot's login processes hand their lines to its log process, so a
        line can reach the file a moment after the client got its reply.
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            missing = [needle for needle in needles if needle not in text]
            if not missing:
                return text
            if time.monotonic() >= deadline:
                raise ServerError(
                    f"dovecot.log lacks {missing} after {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.02)


def postfix_main_cf(
    *,
    directory: Path,
    map_path: Path,
    map_type: str,
    hostname: str = POSTFIX_HOSTNAME,
    banner: str = "popbs test",
) -> str:
    return f"""\
# Written by tests/servers.py for one test run; not for production.
compatibility_level = 3.6
queue_directory = {directory}/queue
data_directory = {directory}/data
# No syslog here; Postfix 3.4+ logs to a file through postlogd (master.cf).
maillog_file = {directory}/postfix.log
maillog_file_prefixes = {directory}

myhostname = {hostname}
smtpd_banner = $myhostname ESMTP {banner}
mydomain = example.org
myorigin = $myhostname
mydestination = $myhostname
relay_domains =
# Must not contain the addresses the tests pose as: smtpd judges the address
# given by XCLIENT, and mynetworks is used wherever permit_mynetworks is.
mynetworks = 127.0.0.1/32 [::1]/128
inet_interfaces = loopback-only
inet_protocols = all
# Client names would come from DNS; the tests never leave loopback.
smtpd_peername_lookup = no

# Never deliver: "discard" rather than "error" or "retry", because smtpd already
# answers RCPT TO with 550/450 for addresses that resolve to those. master.cf
# has no qmgr, so nothing queued would be delivered anyway, and DATA is refused
# so nothing is ever queued.
default_transport = discard:popbs test server never delivers
relay_transport = discard:popbs test server never delivers
local_transport = discard:popbs test server never delivers
virtual_transport = discard:popbs test server never delivers
smtpd_data_restrictions = reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
# cleanup waits this long for a flow-control token from qmgr, which this
# instance does not run; without this every accepted RCPT TO takes a second.
in_flow_delay = 0

smtpd_authorized_xclient_hosts = 127.0.0.1 [::1]
smtpd_relay_restrictions =
    check_client_access {map_type}:{map_path},
    reject_unauth_destination
"""


def postfix_master_cf(*, smtp_port: int) -> str:
    return f"""\
# service type private unpriv chroot wakeup maxproc command
127.0.0.1:{smtp_port} inet n - n - - smtpd
[::1]:{smtp_port} inet n - n - - smtpd
cleanup unix n - n - 0 cleanup
rewrite unix - - n - - trivial-rewrite
anvil unix - - n - 1 anvil
postlog unix-dgram n - n - 1 postlogd
"""


class PostfixServer(_ForegroundServer):
    """Postfix's smtpd on loopback, relaying only for clients in the map."""

    name = "postfix"
    startup_hint = (
        " (the master reports start-up errors such as a port in use or a bad"
        " master.cf to syslog only, and no syslog runs here)"
    )

    def __init__(
        self,
        directory: Path,
        map_path: Path,
        map_type: str = "hash",
        hostname: str = POSTFIX_HOSTNAME,
    ) -> None:
        super().__init__(directory)
        self.map_path = map_path
        self.map_type = map_type
        self.hostname = hostname
        self.config_dir = directory / "conf"
        self.log_path = directory / "postfix.log"
        self.smtp_port = 0

    @property
    def env(self) -> dict[str, str]:
        """The environment for Postfix commands (and popbs) on this instance."""
        return {**os.environ, "MAIL_CONFIG": str(self.config_dir)}

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def _leftovers(self, master_pid: int) -> list[int]:
        # A daemon that left the session would still carry our MAIL_CONFIG.
        return sorted(
            set(super()._leftovers(master_pid))
            | set(_postfix_daemons_of(self.config_dir))
        )

    def write_map(self, grants: Mapping[str, int] | Iterable[tuple[str, int]]) -> None:
        """Replace the map smtpd reads with these grants (address, unix time)."""
        write_map(self.map_path, self.map_type, grants, self.config_dir)

    def _prepare(self) -> None:
        for sub in ("", "conf", "queue"):
            (self.directory / sub).mkdir(mode=0o755, exist_ok=True)
            (self.directory / sub).chmod(0o755)
        # Postfix's master opens data_directory/master.lock as the postfix user.
        data = self.directory / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
        self.smtp_port = free_port()
        (self.config_dir / "main.cf").write_text(
            postfix_main_cf(
                directory=self.directory,
                map_path=self.map_path,
                map_type=self.map_type,
                hostname=self.hostname,
                banner=self.token,
            )
        )
        (self.config_dir / "master.cf").write_text(
            postfix_master_cf(smtp_port=self.smtp_port)
        )
        # Postfix rereads a main.cf changed within the last second until it is
        # older (the file might be half written), which costs about 2 s for
        # every postfix, postmap and postconf run right after this.
        old = time.time() - 60
        for name in ("main.cf", "master.cf"):
            os.utime(self.config_dir / name, (old, old))

    def start(self) -> Self:
        self._prepare()
        if not map_file(self.map_path, self.map_type).exists():
            # An smtpd that finds the table missing answers 451 to every
            # RCPT TO, and goes on doing so after the map appears, until it
            # exits; so start from an empty map. Backdate it: smtpd notices a
            # rebuilt table by its mtime in whole seconds, and a rebuild in
            # place within the same second as this one would go unseen.
            self.write_map({})
            for path in (self.map_path, map_file(self.map_path, self.map_type)):
                old = time.time() - 60
                os.utime(path, (old, old))
        # "postfix check" creates the queue directories with their owners.
        checked = subprocess.run(
            [str(POSTFIX), "-c", str(self.config_dir), "check"],
            capture_output=True,
            text=True,
            env=self.env,
        )
        if checked.returncode != 0:
            # Without a terminal, postfix(1) reports its errors to the log only.
            raise ServerError(
                f"postfix check failed: {checked.stderr}\n{self.log_tail()}"
            )
        self._spawn([str(POSTFIX_MASTER), "-c", str(self.config_dir), "-d"])
        for host in LOOPBACK:
            self._wait_for_greeting(host, self.smtp_port, b"220 ")
        return self

    def rcpt_reply(
        self,
        as_addr: str,
        rcpt: str = "someone@example.net",
        sender: str = "sender@example.com",
        host: str = "127.0.0.1",
    ) -> tuple[int, str]:
        """Ask smtpd, posing as as_addr, to take rcpt; return its reply.

        The session ends with QUIT right after RCPT TO.
        """
        if host not in LOOPBACK:
            raise ValueError(f"refusing to connect to {host}: loopback only")
        # XCLIENT wants IPv6 addresses tagged, as in Postfix's own logs.
        xaddr = f"IPV6:{as_addr}" if ":" in as_addr else as_addr
        with smtplib.SMTP(local_hostname="client.example", timeout=IO_TIMEOUT) as smtp:
            code, banner = smtp.connect(host, self.smtp_port)
            self.check_greeting(f"{code} {banner.decode(errors='replace')}")
            smtp.ehlo()
            code, text = smtp.docmd("XCLIENT", f"ADDR={xaddr}")
            if code != 220:
                raise ServerError(
                    f"XCLIENT ADDR={xaddr} got {code} {text!r}\n{self.log_tail()}"
                )
            # XCLIENT resets the session; Postfix wants a new EHLO.
            smtp.ehlo()
            code, text = smtp.mail(sender)
            if code != 250:
                raise ServerError(
                    f"MAIL FROM:<{sender}> got {code} {text!r}\n{self.log_tail()}"
                )
            code, text = smtp.rcpt(rcpt)
            smtp.quit()
        return code, text.decode(errors="replace")

    def rcpt_code(self, as_addr: str, rcpt: str = "someone@example.net") -> int:
        """The SMTP code smtpd answers RCPT TO:<rcpt> with, posing as as_addr."""
        return self.rcpt_reply(as_addr, rcpt)[0]


def sync_command(
    dovecot: DovecotServer, postfix: PostfixServer, state_dir: Path
) -> list[str]:
    """`popbs sync` on the test Dovecot's log into the test Postfix's map.

    No --map-type or --postmap: like the cron job, popbs asks the test
    Postfix's postconf (through MAIL_CONFIG) for both.
    """
    return [
        "sync",
        "--log",
        str(dovecot.log_path),
        "--map",
        str(postfix.map_path),
        "--state-dir",
        str(state_dir),
    ]


def map_file(map_path: Path, map_type: str) -> Path:
    """The file postmap builds from map_path for map_type."""
    return map_path.with_name(map_path.name + MAP_SUFFIXES[map_type])


def write_map(
    map_path: Path,
    map_type: str,
    grants: Mapping[str, int] | Iterable[tuple[str, int]],
    mail_config: Path,
) -> None:
    """Write a grant file ("IP UNIXTIME" lines) and build its map with postmap.

    Both are built under temporary names and renamed into place, so a running
    smtpd sees the old map or the new one, and notices the change: Postfix
    checks a table's inode link count as well as its mtime, whose resolution
    is a whole second. mail_config is the Postfix config dir postmap reads.
    """
    items = grants.items() if isinstance(grants, Mapping) else grants
    map_path.parent.mkdir(parents=True, exist_ok=True)
    temp = map_path.with_name(f".{map_path.name}.new")
    temp.write_text("".join(f"{addr} {stamp}\n" for addr, stamp in items))
    built = subprocess.run(
        [str(POSTMAP), f"{map_type}:{temp}"],
        capture_output=True,
        text=True,
        env={**os.environ, "MAIL_CONFIG": str(mail_config)},
    )
    if built.returncode != 0 or built.stderr.strip():
        raise ServerError(f"postmap {map_type}:{temp} failed: {built.stderr}")
    temp_db = map_file(temp, map_type)
    temp_db.chmod(0o644)
    temp.chmod(0o644)
    os.replace(temp_db, map_file(map_path, map_type))
    os.replace(temp, map_path)
