"""Settings: option, then POPBS_<NAME>, then the config file, then the default."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popbs_tools import mtas, postfix, timestamps
from popbs_tools.addresses import IPNetwork, Policy, parse_network
from popbs_tools.errors import SettingsError
from popbs_tools.mynetworks import PostfixNetworks

DEFAULT_CONFIG = Path("/etc/popbs/popbs.conf")
DEFAULT_MAP = Path("/etc/postfix/popbs")
DEFAULT_STATE_DIR = Path("/var/lib/popbs")
DEFAULT_TTL = "30m"
SECTION = "popbs"

# Config-file keys (and POPBS_<KEY> variables) for the settings that take a value.
KEYS = (
    "log",
    "map",
    "map_type",
    "state_dir",
    "ttl",
    "never_grant",
    "postmap",
    "now",
    "journal",
    "journal_file",
    "disable",
    "max_session",
    "max_grants",
    "max_read",
    "allow",
    "trust_mynetworks",
    "syslog",
    "mta",
    "rotated",
)
LISTS = ("log", "never_grant", "journal_file", "disable", "allow", "rotated")
DEFAULT_MAX_SESSION = "12h"
# A flood of logins (an attack, a botnet of compromised accounts) must not
# grow the map without bound; see popbs.conf(5), "max_grants".
DEFAULT_MAX_GRANTS = 100_000
# A config section "[rule NAME]" adds a recognition rule with these keys.
RULE_PREFIX = "rule "
RULE_KEYS = ("tag", "regex", "protocol", "server", "marker")
_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off", ""}


@dataclass(frozen=True)
class RuleSpec:
    """A rule from the config file, checked by the recogniser that builds it."""

    name: str
    tags: tuple[str, ...]
    regex: str
    protocol: str | None
    server: str
    markers: tuple[str, ...]


def parse_size(text: str) -> int:
    """Bytes: plain, or with K, M, G (powers of 1024); raises ValueError."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower()
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    if not (number.isascii() and number.isdigit()):
        raise ValueError(text)
    return int(number) * factor


def default_logs() -> tuple[Path, ...]:
    debian = Path("/var/log/mail.log")
    return (debian,) if debian.exists() else (Path("/var/log/maillog"),)


@dataclass(frozen=True)
class Settings:
    logs: tuple[Path, ...]
    map_path: Path
    map_type_setting: str | None
    state_dir: Path
    ttl: int
    policy: Policy
    postmap_setting: Path | None
    now: float
    journal: bool = False
    journal_files: tuple[Path, ...] = ()
    disabled: frozenset[str] = frozenset()
    max_session: int = 12 * 3600
    max_grants: int = DEFAULT_MAX_GRANTS
    max_read: int = 0
    rules: tuple[RuleSpec, ...] = ()
    syslog: bool = False
    mta: str = "postfix"
    # Globs of rotated generations kept elsewhere (logrotate's olddir).
    rotated: tuple[str, ...] = ()

    @property
    def map_type(self) -> str:
        """The map type; Postfix is asked only when one is needed and not set.

        Other MTAs have maps of their own (mtas.py): "none" means no Postfix
        map, and postconf, which may not exist there, is never run.
        """
        if self.mta != "postfix":
            return self.map_type_setting or "none"
        return self.map_type_setting or postfix.default_map_type()

    @property
    def postmap(self) -> Path | None:
        if self.mta != "postfix" or self.map_type == "none":
            return None
        return self.postmap_setting or postfix.default_postmap()


def _read_config(path: Path, required: bool) -> tuple[dict[str, str], list[RuleSpec]]:
    import configparser  # slow to import, and a config file is optional

    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        if required:
            raise SettingsError(f"config file {path} does not exist") from None
        return {}, []
    except OSError as error:
        raise SettingsError(
            f"cannot read config file {path}: {error.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise SettingsError(f"config file {path} is not valid UTF-8") from None
    except configparser.Error as error:
        first = str(error).splitlines()[0]
        raise SettingsError(f"config file {path}: {first}") from None

    values: dict[str, str] = {}
    rules = []
    for section in parser.sections():
        found = {key.replace("-", "_"): value for key, value in parser.items(section)}
        if section == SECTION:
            _check_keys(path, section, found, KEYS)
            values = found
        elif section.startswith(RULE_PREFIX):
            _check_keys(path, section, found, RULE_KEYS)
            rules.append(_rule_spec(path, section, found))
        else:
            raise SettingsError(
                f"config file {path}: unknown section [{section}]; use [{SECTION}] "
                f"or [{RULE_PREFIX}NAME]"
            )
    return values, rules


def _check_keys(
    path: Path, section: str, found: dict[str, str], known: tuple[str, ...]
) -> None:
    unknown = sorted(set(found) - set(known))
    if unknown:
        raise SettingsError(
            f"config file {path}: unknown key {unknown[0]!r} in [{section}]; "
            f"known keys: {', '.join(known)}"
        )


def _rule_spec(path: Path, section: str, found: dict[str, str]) -> RuleSpec:
    name = section[len(RULE_PREFIX) :].strip()
    missing = [key for key in ("tag", "regex") if not found.get(key)]
    if missing:
        raise SettingsError(f"config file {path}: [{section}] needs {missing[0]} =")
    protocol = found.get("protocol") or None
    if protocol not in (None, "pop3", "imap"):
        raise SettingsError(
            f"config file {path}: [{section}] protocol must be pop3 or imap"
        )
    return RuleSpec(
        name=name,
        tags=tuple(_split(found["tag"])),
        regex=found["regex"],
        protocol=protocol,
        server=found.get("server") or name,
        markers=tuple(_split(found.get("marker", ""))),
    )


def _split(value: str) -> list[str]:
    return value.replace(",", " ").split()


def resolve(
    options: Mapping[str, Any], environ: Mapping[str, str], clock: float
) -> Settings:
    """Combine the sources of each setting; raise SettingsError on a bad value.

    `options` holds the command-line values (None or () when not given).
    """
    config_option = options.get("config") or environ.get("POPBS_CONFIG")
    config_path = Path(config_option) if config_option else DEFAULT_CONFIG
    config, rules = _read_config(config_path, required=bool(config_option))

    origins: dict[str, str] = {}

    def pick(key: str) -> Any:
        given = options.get(key)
        if given not in (None, ()):
            origins[key] = "--" + key.replace("_", "-")
            return list(given) if key in LISTS else given
        env = environ.get(f"POPBS_{key.upper()}")
        if env:
            origins[key] = f"POPBS_{key.upper()}"
            return _split(env) if key in LISTS else env
        if key in config:
            origins[key] = f"{key} in {config_path}"
            return _split(config[key]) if key in LISTS else config[key]
        return None

    def bad(key: str) -> str:
        return "bad " + origins.get(key, "--" + key.replace("_", "-"))

    try:
        now = timestamps.parse_when(pick("now"), clock) if pick("now") else clock
    except ValueError as error:
        raise SettingsError(f"{bad('now')}: {error}") from None
    try:
        ttl = timestamps.parse_duration(pick("ttl") or DEFAULT_TTL)
    except ValueError as error:
        raise SettingsError(f"{bad('ttl')}: {error}") from None

    def cidrs(key: str) -> list[IPNetwork]:
        networks: list[IPNetwork] = []
        for text in pick(key) or ():
            try:
                networks.append(parse_network(text))
            except ValueError:
                raise SettingsError(f"{bad(key)}: {text!r} is not a CIDR") from None
        return networks

    def flag(key: str, default: bool) -> bool:
        value = pick(key)
        if value is None:
            return default
        if isinstance(value, str):
            if value.lower() not in _TRUE | _FALSE:
                raise SettingsError(f"{bad(key)}: {value!r}; use yes or no")
            return value.lower() in _TRUE
        return bool(value)

    networks = cidrs("never_grant")
    # Postfix's mynetworks is read only when a grant is considered (lazily).
    # Postfix's mynetworks means nothing to another MTA's relay rules.
    postfix_mta = (pick("mta") or "postfix") == "postfix"
    trusted = PostfixNetworks() if flag("trust_mynetworks", postfix_mta) else None
    policy = Policy.with_extra(networks, cidrs("allow"), trusted)

    map_type = pick("map_type")
    if map_type is not None and map_type not in postfix.MAP_TYPES:
        raise SettingsError(
            f"{bad('map_type')}: {map_type!r}; "
            f"use one of {', '.join(postfix.MAP_TYPES)}"
        )

    try:
        max_session = timestamps.parse_duration(
            pick("max_session") or DEFAULT_MAX_SESSION
        )
    except ValueError as error:
        raise SettingsError(f"{bad('max_session')}: {error}") from None

    raw_max = pick("max_grants")
    try:
        text = str(raw_max) if raw_max is not None else str(DEFAULT_MAX_GRANTS)
        if not (text.isascii() and text.isdigit() and len(text) <= 12):
            raise ValueError
        max_grants = int(text)
    except ValueError:
        raise SettingsError(
            f"{bad('max_grants')}: {raw_max!r}; use a whole number, 0 for no limit"
        ) from None

    raw_read = pick("max_read")
    try:
        max_read = parse_size(raw_read) if raw_read is not None else 0
    except ValueError:
        raise SettingsError(
            f"{bad('max_read')}: {raw_read!r}; use bytes, or 64M, 1G; 0 for no limit"
        ) from None

    journal = pick("journal")
    if isinstance(journal, str):
        if journal.lower() not in _TRUE | _FALSE:
            raise SettingsError(f"{bad('journal')}: {journal!r}; use yes or no")
        journal = journal.lower() in _TRUE
    journal_files = tuple(Path(name) for name in pick("journal_file") or ())
    journal = bool(journal or journal_files)

    # With the journal on, the default log file is not read unless named.
    logs = tuple(Path(name) for name in pick("log") or ())
    if not logs and not journal:
        logs = default_logs()
    mta = pick("mta") or "postfix"
    if mta not in mtas.MTAS:
        raise SettingsError(f"{bad('mta')}: {mta!r}; use one of {', '.join(mtas.MTAS)}")

    postmap = pick("postmap")
    return Settings(
        logs=logs,
        map_path=Path(pick("map") or mtas.default_map(mta)),
        map_type_setting=map_type,
        state_dir=Path(pick("state_dir") or DEFAULT_STATE_DIR),
        ttl=ttl,
        policy=policy,
        postmap_setting=Path(postmap) if postmap else None,
        now=now,
        journal=journal,
        journal_files=journal_files,
        disabled=frozenset(pick("disable") or ()),
        max_session=max_session,
        max_grants=max_grants,
        max_read=max_read,
        rules=tuple(rules),
        syslog=flag("syslog", False),
        mta=mta,
        rotated=tuple(pick("rotated") or ()),
    )


def environment() -> Mapping[str, str]:
    return os.environ
