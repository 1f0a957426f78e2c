"""Settings: option, then POPBS_<NAME>, then the config file, then the default."""

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popbs_tools import postfix, timestamps
from popbs_tools.addresses import IPNetwork, Policy, parse_network
from popbs_tools.errors import SettingsError

DEFAULT_CONFIG = Path("/etc/popbs/popbs.conf")
DEFAULT_MAP = Path("/etc/postfix/popbs")
DEFAULT_STATE_DIR = Path("/var/lib/popbs")
DEFAULT_TTL = "30m"
SECTION = "popbs"

# Config-file keys (and POPBS_<KEY> variables) for the settings that take a value.
KEYS = ("log", "map", "map_type", "state_dir", "ttl", "never_grant", "postmap", "now")
LISTS = ("log", "never_grant")


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

    @property
    def map_type(self) -> str:
        """The map type; Postfix is asked only when one is needed and not set."""
        return self.map_type_setting or postfix.default_map_type()

    @property
    def postmap(self) -> Path | None:
        if self.map_type == "none":
            return None
        return self.postmap_setting or postfix.default_postmap()


def _read_config(path: Path, required: bool) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        if required:
            raise SettingsError(f"config file {path} does not exist") from None
        return {}
    except OSError as error:
        raise SettingsError(
            f"cannot read config file {path}: {error.strerror}"
        ) from None
    except configparser.Error as error:
        first = str(error).splitlines()[0]
        raise SettingsError(f"config file {path}: {first}") from None

    if not parser.has_section(SECTION):
        return {}
    values = {key.replace("-", "_"): value for key, value in parser.items(SECTION)}
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise SettingsError(
            f"config file {path}: unknown key {unknown[0]!r} in [{SECTION}]; "
            f"known keys: {', '.join(KEYS)}"
        )
    return values


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
    config = _read_config(config_path, required=bool(config_option))

    def pick(key: str) -> Any:
        given = options.get(key)
        if given not in (None, ()):
            return list(given) if key in LISTS else given
        env = environ.get(f"POPBS_{key.upper()}")
        if env:
            return _split(env) if key in LISTS else env
        if key in config:
            return _split(config[key]) if key in LISTS else config[key]
        return None

    try:
        now = timestamps.parse_when(pick("now"), clock) if pick("now") else clock
    except ValueError as error:
        raise SettingsError(f"bad --now: {error}") from None
    try:
        ttl = timestamps.parse_duration(pick("ttl") or DEFAULT_TTL)
    except ValueError as error:
        raise SettingsError(f"bad --ttl: {error}") from None

    networks: list[IPNetwork] = []
    for text in pick("never_grant") or ():
        try:
            networks.append(parse_network(text))
        except ValueError:
            raise SettingsError(f"bad --never-grant: {text!r} is not a CIDR") from None

    map_type = pick("map_type")
    if map_type is not None and map_type not in postfix.MAP_TYPES:
        raise SettingsError(
            f"bad --map-type: {map_type!r}; use one of {', '.join(postfix.MAP_TYPES)}"
        )

    logs = tuple(Path(name) for name in pick("log") or ()) or default_logs()
    postmap = pick("postmap")
    return Settings(
        logs=logs,
        map_path=Path(pick("map") or DEFAULT_MAP),
        map_type_setting=map_type,
        state_dir=Path(pick("state_dir") or DEFAULT_STATE_DIR),
        ttl=ttl,
        policy=Policy.with_extra(networks),
        postmap_setting=Path(postmap) if postmap else None,
        now=now,
    )


def environment() -> Mapping[str, str]:
    return os.environ
