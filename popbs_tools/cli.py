"""The `popbs` command: thin click commands over the jobs in popbs_tools.jobs."""

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from popbs_tools import (
    __version__,
    audit,
    grants,
    jobs,
    lastrun,
    manual,
    progress,
    settings,
)
from popbs_tools.addresses import normalise
from popbs_tools.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NO,
    InputError,
    MapError,
    OutputError,
    PopbsError,
    SettingsError,
)
from popbs_tools.scan import Found, scan_files
from popbs_tools.settings import Settings
from popbs_tools.timestamps import format_left, format_local, parse_duration

log = logging.getLogger("popbs_tools")

F = TypeVar("F", bound=Callable[..., Any])


def _setting_options(command: F) -> F:
    """The settings every command takes, after its name (`popbs sync --log F`)."""
    options = [
        click.option(
            "--config",
            metavar="FILE",
            help="Config file (INI, section [popbs]); default "
            "/etc/popbs/popbs.conf if it exists.",
        ),
        click.option(
            "--log",
            "log",
            multiple=True,
            metavar="FILE",
            help="A POP3/IMAP log to scan; repeatable. Default "
            "/var/log/mail.log, else /var/log/maillog.",
        ),
        click.option(
            "--map",
            "map",
            metavar="FILE",
            help="The grant file; default /etc/postfix/popbs.",
        ),
        click.option(
            "--map-type",
            metavar="TYPE",
            help="hash, btree, lmdb, cdb, or none for the plain file; "
            "default Postfix's default_database_type.",
        ),
        click.option(
            "--state-dir",
            metavar="DIR",
            help="Offsets and lock; default /var/lib/popbs.",
        ),
        click.option(
            "--ttl",
            metavar="TIME",
            help="How long a login grants relay: 90s, 30m, 2h, 1d or "
            "seconds; default 30m.",
        ),
        click.option(
            "--never-grant",
            multiple=True,
            metavar="CIDR",
            help="Never grant these networks (besides 127.0.0.0/8 and "
            "::1); repeatable.",
        ),
        click.option(
            "--postmap",
            metavar="PATH",
            help="postmap to run; default from postconf's command_directory.",
        ),
        click.option(
            "--journal",
            is_flag=True,
            default=None,
            help="Read the systemd journal (through journalctl) as well as or "
            "instead of log files.",
        ),
        click.option(
            "--journal-file",
            multiple=True,
            metavar="FILE",
            help="Read these journal files (journalctl --file) instead of the "
            "system journal; repeatable.",
        ),
        click.option(
            "--disable",
            multiple=True,
            metavar="SERVER",
            help="Do not recognise this server's logins (dovecot, courier, ...); "
            "repeatable.",
        ),
        click.option(
            "--max-session",
            metavar="TIME",
            help="Keep refreshing the grant of an open IMAP session for at most "
            "this long; default 12h.",
        ),
        click.option(
            "--max-grants",
            metavar="N",
            help="Keep at most N grants, the newest; 0 for no limit; default 100000.",
        ),
        click.option(
            "--max-read",
            metavar="SIZE",
            help="Read at most about SIZE (64M, 1G) of the logs in one run; "
            "the rest the next run. Default: no limit.",
        ),
        click.option(
            "--now",
            metavar="TIME",
            help="Act as if it were this time (Unix seconds or ISO 8601).",
        ),
        click.option(
            "-v",
            "--verbose",
            count=True,
            help="Explain each step on stderr; -vv for more.",
        ),
        click.option("-q", "--quiet", is_flag=True, help="Print errors only."),
        click.option(
            "--allow",
            multiple=True,
            metavar="CIDR",
            help="Grant only inside these networks; repeatable. Default: anywhere.",
        ),
        click.option(
            "--trust-mynetworks/--no-trust-mynetworks",
            default=None,
            help="Never grant what Postfix's mynetworks already trusts "
            "(postconf -xh mynetworks); default on.",
        ),
        click.option(
            "--syslog",
            is_flag=True,
            default=None,
            help="Log each grant added or pruned to the system log "
            "(facility mail, ident popbs).",
        ),
        click.option(
            "--mta",
            type=click.Choice(["postfix", "sendmail", "exim", "qmail"]),
            help="The MTA whose table is built: postfix (default), sendmail "
            "(makemap), exim (net-lsearch file) or qmail (tcprules).",
        ),
        click.option(
            "--rotated",
            multiple=True,
            metavar="GLOB",
            help="Also look for a log's rotated generations among these files "
            "(logrotate's olddir: /var/log/old/*); repeatable.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("popbs: %(message)s"))
    # The audit logger passes its lines on at INFO for --syslog: stderr
    # still shows only what -v or -q asks for.
    handler.setLevel(level)
    handler.addFilter(progress.clear_first)
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


@contextmanager
def _stdout_errors() -> Iterator[None]:
    """A full disk or a closed terminal on stdout is an output error."""
    try:
        yield
    except BrokenPipeError:
        raise  # the reader went away: handled as success in _command
    except OSError as error:
        raise OutputError(
            f"cannot write to standard output: {error.strerror}"
        ) from None


def out(line: str) -> None:
    """Write one line of data to stdout."""
    with _stdout_errors():
        # Not click.echo: it flushes after every line, one write(2) per login
        # when a scan's output goes to a file or a pipe.
        sys.stdout.write(line + "\n")


def flush() -> None:
    with _stdout_errors():
        sys.stdout.flush()


def _command(function: Callable[..., int | None]) -> Callable[..., None]:
    """Resolve settings, run `function`, turn errors into one line and an exit code."""

    @functools.wraps(function)
    def wrapper(**options: Any) -> None:
        verbose = options.pop("verbose")
        quiet = options.pop("quiet")
        _setup_logging(verbose, quiet)
        if not quiet:
            progress.enable(sys.stderr, settings.environment())
        names = ("config", *settings.KEYS)
        values = {name: options.pop(name) for name in names}
        # A command may take a setting's option for itself (grant --ttl is
        # the length of that one grant, not the TTL of all the others).
        for name in getattr(function, "own_options", ()):
            options[name] = values.pop(name)
        try:
            resolved = settings.resolve(values, settings.environment(), time.time())
            if resolved.syslog:
                audit.to_syslog(settings.environment())
            code = function(resolved, **options)
            flush()
        except PopbsError as error:
            if verbose:
                log.exception("%s", error)
            click.echo(f"popbs: error: {error}", err=True)
            sys.exit(error.exit_code)
        except BrokenPipeError:
            # The reader went away (`popbs scan | head`): not an error. Point
            # stdout at /dev/null so that the flush at exit stays quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("popbs: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as error:
            if verbose:
                log.exception("internal error")
            click.echo(
                f"popbs: internal error: {type(error).__name__}: {error} "
                "(run with -v for details)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)
        sys.exit(code or 0)

    return wrapper


def main() -> None:
    """Entry point: click's usage errors become one line, like every other error."""
    try:
        code = popbs.main(prog_name="popbs", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:
        # A bare `popbs` asks what there is: the help is the answer.
        click.echo(error.ctx.get_help() if error.ctx else "")
        sys.exit(0)
    except click.UsageError as error:
        hint = f"; see '{error.ctx.command_path} --help'" if error.ctx else ""
        message = error.format_message().rstrip(".")
        click.echo(f"popbs: error: {message}{hint}", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"popbs: error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except click.Abort:
        click.echo("popbs: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="popbs")
def popbs() -> None:
    """POP-before-SMTP for Postfix: logins in POP3/IMAP logs become a relay map.

    Run `popbs sync` from cron every minute. See popbs(8).
    """


@popbs.command()
@click.option(
    "--reset",
    is_flag=True,
    help="Forget the saved state first: read the logs as on a first run.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print what would change (+ IP added, - IP pruned, ~ IP renewed) and "
    "write nothing; exit 1 if the map would change, 0 if not.",
)
@click.option(
    "--watch",
    metavar="TIME",
    help="Keep watching the logs for TIME after starting (65s from cron), "
    "publishing each login within a second.",
)
@_setting_options
@_command
def sync(config: Settings, reset: bool, dry_run: bool, watch: str | None) -> int:
    """Scan the logs, merge new logins, prune, publish the map if it changed.

    The cron job. Prints nothing on success; exits 0 without touching
    anything if another run holds the lock. With --watch, it goes on
    watching the logs under the lock and publishes each new login within a
    second; a run started meanwhile waits for the lock and takes over, so
    that `* * * * * popbs sync --watch 65s` leaves no minute unwatched.

    \b
    Examples:
      popbs sync --log /var/log/mail.log --map /etc/postfix/popbs
      popbs sync --dry-run
    """
    if dry_run:
        if watch is not None:
            raise SettingsError("--dry-run and --watch do not go together")
        return _dry_run(config, reset)
    if watch is None:
        lastrun.recorded(
            config.state_dir, config.now, "sync", lambda: jobs.sync(config, reset)
        )
        return 0
    try:
        length = parse_duration(watch)
    except ValueError as error:
        raise SettingsError(f"bad --watch: {error}") from None
    if reset:
        raise SettingsError("--reset and --watch do not go together")
    lastrun.recorded(
        config.state_dir, config.now, "sync", lambda: jobs.watch(config, length)
    )
    return 0


def _dry_run(config: Settings, reset: bool) -> int:
    from popbs_tools import preview

    seen = preview.dry_run(config, reset)
    for line in seen.lines():
        out(line)
    return EXIT_NO if seen.changes_map else 0


@popbs.command()
@click.argument("files", nargs=-1, metavar="[FILE|-]...")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text.")
@click.option("--no-state", is_flag=True, help="Read without touching the state.")
@click.option("--from-start", is_flag=True, help="Ignore the saved offsets.")
@click.option(
    "--reset", is_flag=True, help="Forget the saved state first (a first run)."
)
@_setting_options
@_command
def scan(
    config: Settings,
    files: tuple[str, ...],
    as_json: bool,
    no_state: bool,
    from_start: bool,
    reset: bool,
) -> int:
    """Print the logins found: `IP TIME USER SERVER`, one a line.

    Without FILE, reads the configured logs since their saved offsets and
    saves the new offsets once the output is written. Reports every login,
    whatever its age.

    \b
    Examples:
      popbs scan /var/log/mail.log.1
      popbs scan --no-state --from-start --json
    """

    def emit(login: Found) -> None:
        if as_json:
            fields = {k: v for k, v in login.__dict__.items() if v is not None}
            out(json.dumps(fields))
        else:
            out(login.as_text())

    if files:
        for login in scan_files(jobs.interpreter(config), files):
            emit(login)
    elif no_state:
        for login in jobs.scan_without_state(config, from_start):
            emit(login)
    else:
        # The offsets are saved once the output is written: out() buffers.
        def emit_flushed(login: Found) -> None:
            emit(login)
            flush()

        jobs.scan_with_state(config, from_start, emit_flushed, reset)
    return 0


def _input_lines(files: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    for name in files or ("-",):
        if name == "-":
            yield "stdin", sys.stdin.read().splitlines()
            continue
        try:
            with open(name, encoding="utf-8", errors="replace") as handle:
                yield name, handle.read().splitlines()
        except OSError as error:
            raise InputError(f"cannot read {name}: {error.strerror}") from None


@popbs.command()
@click.argument("files", nargs=-1, metavar="[FILE|-]...")
@_setting_options
@click.option(
    "--publish", "publish_map", is_flag=True, help="Also rebuild the map now."
)
@_command
def merge(config: Settings, files: tuple[str, ...], publish_map: bool) -> int:
    """Merge `IP [TIME]` lines, or scan's JSON lines, into the grant file.

    One line per address is kept, with the newest time; no TIME means now.
    Nothing is merged if any line is malformed. Give --publish, or run
    `popbs publish` (or wait for the next sync), to rebuild the map.

    \b
    Examples:
      echo 198.51.100.7 | popbs merge --publish
      popbs scan --json old.log | popbs merge
    """
    entries: list[jobs.Entry] = []
    for origin, lines in _input_lines(files):
        entries += jobs.parse_entries(lines, origin, config.now)

    accepted = []
    for entry in entries:
        refusal = config.policy.refusal(entry.ip)
        if refusal:
            log.warning("not granting %s: %s", entry.ip, refusal)
        else:
            accepted.append(entry)

    change = jobs.merge_logins(config, accepted, publish_map)
    jobs.audited(change, {})
    return 0


@popbs.command()
@_setting_options
@_command
def prune(config: Settings) -> int:
    """Drop grants older than the TTL from the grant file."""
    change = jobs.locked_update(config, lambda current: current, publish_map=False)
    jobs.audited(change, {})
    return 0


@popbs.command()
@_setting_options
@_command
def publish(config: Settings) -> int:
    """Build the map the MTA reads from the grant file (what sync does).

    Creates an empty table when there is no grant file yet. With --mta
    sendmail, exim or qmail, builds that MTA's table (see popbs(8)).
    """
    jobs.publish_now(config)
    return 0


def _grantable(config: Settings, address: str) -> str:
    key = normalise(address)
    if key is None:
        raise SettingsError(f"{address!r} is not an IP address")
    refusal = config.policy.refusal(key)
    if refusal:
        raise SettingsError(f"refusing {key}: {refusal}, never granted")
    return key


def _owns(*names: str) -> Callable[[F], F]:
    """Mark a command as taking these settings' options for itself."""

    def mark(function: F) -> F:
        function.own_options = names  # type: ignore[attr-defined]
        return function

    return mark


@popbs.command()
@click.argument("address")
@_setting_options
@_command
@_owns("ttl")
def grant(config: Settings, address: str, ttl: str | None) -> int:
    """Let ADDRESS relay now, as if it had logged in; publish at once.

    --ttl is the length of this grant (90s, 30m, 2h, 1d), default the TTL;
    a grant longer than the TTL is kept up by each sync until it ends. The
    TTL of every other grant comes from the environment or the config file.
    Loopback, never-grant and invalid addresses are refused. If a sync holds
    the lock, the grant is queued and that sync publishes it.

    \b
    Examples:
      popbs grant 198.51.100.7
      popbs grant 2001:db8::7 --ttl 2h
    """
    key = _grantable(config, address)
    try:
        seconds = parse_duration(ttl) if ttl is not None else config.ttl
    except ValueError as error:
        raise SettingsError(f"bad --ttl: {error}") from None
    until = config.now + seconds
    wanted = manual.Request(manual.GRANT, key, config.now, until, manual.requester())
    change = jobs.request(config, wanted)
    if change is not None and key not in change.after:
        raise MapError(
            f"{key} was granted but --max-grants {config.max_grants} left it out: "
            "the grants that last longer were kept"
        )
    log.info("granted %s until %s", key, format_local(until))
    return 0


def _own_help(command: click.Command, name: str, text: str) -> None:
    """Give a common option its own help in one command."""
    for param in command.params:
        if param.name == name and isinstance(param, click.Option):
            param.help = text


_own_help(
    grant,
    "ttl",
    "How long this grant lasts: 90s, 30m, 2h, 1d or seconds; default the TTL. "
    "Other grants keep the TTL of the environment or config file.",
)


@popbs.command()
@click.argument("address")
@_setting_options
@_command
def revoke(config: Settings, address: str) -> int:
    """Stop ADDRESS relaying now; publish at once.

    It comes back only with a login logged after now. Open IMAP sessions of
    the address no longer keep it granted.
    """
    key = normalise(address)
    if key is None:
        raise SettingsError(f"{address!r} is not an IP address")
    wanted = manual.Request(manual.REVOKE, key, config.now, by=manual.requester())
    jobs.request(config, wanted)
    log.info("revoked %s", key)
    return 0


@popbs.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of text.")
@_setting_options
@_command
def list_(config: Settings, as_json: bool) -> int:
    """The current grants: address, last seen logged in, time left."""
    valid = grants.prune(grants.load(config.map_path), config.ttl, config.now)
    ends = jobs.expiries(config)
    width = max((len(key) for key in valid), default=0)
    for key in sorted(valid, key=grants.sort_key):
        when = valid[key]
        left = ends[key] - config.now
        if as_json:
            record = {
                "ip": key,
                "time": when,
                "expires": ends[key],
                "left": int(left),
            }
            out(json.dumps(record))
        else:
            out(f"{key:<{width}}  {format_local(when)}  {format_left(left)}")
    return 0


@popbs.command()
@click.argument("address")
@_setting_options
@_command
def check(config: Settings, address: str) -> int:
    """Exit 0 if ADDRESS may relay now, and say until when; exit 1 if not."""
    key = normalise(address)
    if key is None:
        raise SettingsError(f"{address!r} is not an IP address")
    # Postfix's own trust comes first: permit_mynetworks lets such a client
    # relay whatever popbs would refuse to grant it.
    trusted = config.policy.trusted_by_mta(key)
    if trusted:
        click.echo(
            f"{key} may relay without a grant: it is in Postfix's mynetworks "
            f"({trusted}), so popbs never grants it"
        )
        return 0
    refusal = config.policy.refusal(key)
    if refusal:
        click.echo(f"{key} may not relay: {refusal}, never granted")
        return EXIT_NO
    when = grants.load(config.map_path).get(key)
    if when is None:
        click.echo(f"{key} may not relay: no grant")
        return EXIT_NO
    expiry = jobs.expiries(config).get(key, when + config.ttl)
    if config.now >= expiry:
        click.echo(f"{key} may not relay: its grant expired at {format_local(expiry)}")
        return EXIT_NO
    click.echo(
        f"{key} may relay until {format_local(expiry)} "
        f"({format_left(expiry - config.now)} left)"
    )
    return 0


@popbs.command(name="explain")
@click.argument("line", required=False, metavar="[LINE|-]")
@_setting_options
@_command
def explain_(config: Settings, line: str | None) -> int:
    """Say why a log line grants relay, or why not.

    For each line, the rule that matched and what it read (server, protocol,
    user, client address, session, the line's time), or why nothing is
    granted. LINE is one log line; without it, or with -, lines come from
    standard input and each answer starts with the line's number. The config
    file's rules and --disable count, as in a scan. Exits 0 if at least one
    line would grant, 1 if none.

    \b
    Examples:
      popbs explain 'Dec  4 14:40:11 mail dovecot: imap-login: Login: ...'
      grep dovecot /var/log/mail.log | popbs explain
    """
    from popbs_tools.explain import build_explainer  # spared by cron's runs

    explainer = build_explainer(
        config.rules, config.disabled, config.policy, config.now
    )
    granted = False
    if line is not None and line != "-":
        answer = explainer.explain(line)
        granted = answer.grants
        out(answer.text)
    else:
        for number, raw in enumerate(sys.stdin.buffer, start=1):
            answer = explainer.explain(raw.decode("utf-8", "replace").rstrip("\n"))
            granted = granted or answer.grants
            out(f"{number}: {answer.text}")
    return 0 if granted else EXIT_NO


@popbs.command(name="status")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object instead of text."
)
@_setting_options
@_command
def status_(config: Settings, as_json: bool) -> int:
    """Where each log was read to, the last run, the grants, the map, the lock.

    For each log: the offset reached and the file's size, the inode read,
    the last rotation seen. Then the last sync and how it ended, the number
    of grants, the map's age, and whether a run holds the lock now. Takes
    no lock and writes nothing.

    \b
    Examples:
      popbs status
      popbs status --json | jq .lock.held
    """
    # Imported here, as doctor's and preview's modules: a cron run needs none.
    from popbs_tools import status

    found = status.collect(config)
    if as_json:
        out(json.dumps(status.as_json(found), indent=1, sort_keys=True))
    else:
        for line in status.text_lines(found):
            out(line)
    return 0


@popbs.command(name="doctor")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object instead of text."
)
@_setting_options
@_command
def doctor_(config: Settings, as_json: bool) -> int:
    """Check the installation around popbs; print a fix beside each problem.

    Checks that postmap exists and Postfix supports the map type; that
    main.cf's smtpd_relay_restrictions (smtpd_recipient_restrictions before
    Postfix 2.10) and master.cf's -o overrides consult the map before
    reject_unauth_destination; that the map is readable by Postfix and
    writable only by root, and the state directory private; that the logs
    can be read; that cron or a systemd timer runs popbs sync. Run it as
    the user that runs sync. Exits 0 when all is well, 1 otherwise.

    \b
    Examples:
      popbs doctor
      popbs doctor --config /etc/popbs/popbs.conf --json
    """
    from popbs_tools import doctor, schedule

    places = schedule.places(settings.environment())
    results = doctor.run(doctor.context(config, places))
    if as_json:
        out(json.dumps(doctor.as_json(results), indent=1))
    else:
        for line in doctor.text_lines(results):
            out(line)
    return EXIT_NO if any(findings for _, findings in results) else 0
