"""The grant file: one `IP TIME` line per address, the source of Postfix's map.

Postfix's access(5) treats an all-digit value as OK, so TIME (Unix seconds of
the last login) both grants and records when the grant began. Nothing may
follow the number, and no line may start with white space: postmap would join
it to the previous entry.
"""

import ipaddress
from collections.abc import Iterable
from pathlib import Path

from popbs_tools.addresses import ipv4_number, ipv6_number, normalise
from popbs_tools.errors import MapError

HEADER = b"# popbs-tools grant file: IP TIME (Unix seconds). Written by popbs; "
HEADER += b"edit with popbs merge.\n"

Grants = dict[str, int]


def parse(data: bytes, origin: str = "grant file") -> Grants:
    grants: Grants = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.decode("utf-8", "replace")
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        valid = len(fields) == 2 and fields[1].isascii() and fields[1].isdigit()
        key = normalise(fields[0]) if valid else None
        if key is None or line[0].isspace():
            raise MapError(
                f"{origin}, line {number}: expected 'IP TIME', found {line[:60]!r}; "
                "fix or remove that line"
            )
        grants[key] = max(grants.get(key, 0), int(fields[1]))
    return grants


def load(path: Path) -> Grants:
    """The grants in `path`; an absent file holds none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise MapError(f"cannot read {path}: {error.strerror}") from None
    return parse(data, str(path))


def sort_key(key: str) -> tuple[int, int]:
    number = ipv4_number(key)
    if number is not None:
        return 4, number
    number = ipv6_number(key)
    if number is not None:
        return 6, number
    address = ipaddress.ip_address(key)
    return address.version, int(address)


def render(grants: Grants) -> bytes:
    lines = [f"{key} {grants[key]}\n" for key in sorted(grants, key=sort_key)]
    return HEADER + "".join(lines).encode()


def merge(grants: Grants, logins: Iterable[tuple[str, float]], now: float) -> Grants:
    """Add logins to grants, keeping the newest time for each address.

    A time after `now` (a clock ahead of ours, a misread year) counts as `now`,
    so that no grant can outlive the TTL.
    """
    merged = dict(grants)
    for key, when in logins:
        stamp = int(min(when, now))
        if stamp > merged.get(key, -1):
            merged[key] = stamp
    return merged


def prune(grants: Grants, ttl: int, now: float) -> Grants:
    """Drop grants whose TTL has run out: a grant is valid while now < TIME + TTL."""
    return {key: when for key, when in grants.items() if now < when + ttl}
