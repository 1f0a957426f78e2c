"""Postfix's mynetworks: clients Postfix already trusts, which popbs never grants.

A grant for such a client adds nothing (permit_mynetworks lets it relay) and
only clutters the map and the audit trail. The value is read through
`postconf -xh mynetworks`, so MAIL_CONFIG, $name references and the default
computed from mynetworks_style count as they do for Postfix.

Postfix's match-list syntax (postconf(5), "mynetworks"): entries separated by
white space or commas; `a.b.c.d[/len]`, `[ipv6][/len]`; `!entry` excludes what
follows it from the list (the first entry that matches decides); `/file/name`
stands for the entries in that file; `type:table` for a lookup table.
"""

import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from popbs_tools import postfix
from popbs_tools.addresses import IPNetwork, ipv4_number, parse_network
from popbs_tools.errors import MapError

log = logging.getLogger(__name__)

PARAMETER = "mynetworks"


@dataclass(frozen=True)
class Entry:
    network: IPNetwork
    negated: bool
    text: str  # as written, to name it in a refusal


def parse(value: str, origin: str = PARAMETER, nested: bool = False) -> list[Entry]:
    """The network entries of a mynetworks value, in order; others are noted."""
    entries: list[Entry] = []
    for token in value.replace(",", " ").split():
        negated = token.startswith("!")
        body = token[1:] if negated else token
        if body.startswith("/") and not negated and not nested:
            entries += _file_entries(Path(body))
            continue
        try:
            network = parse_network(body)
        except ValueError:
            # A table (hash:/etc/postfix/network_table, cidr:...), a negated or
            # nested file: popbs cannot look into it, so its addresses may
            # still be granted.
            log.info("%s: %r is not a network; popbs does not read it", origin, token)
            continue
        entries.append(Entry(network, negated, token))
    return entries


def _file_entries(path: Path) -> list[Entry]:
    # The file holds more entries of the same syntax, "#" starting a comment.
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        log.info("%s in %s: cannot read it: %s", path, PARAMETER, error.strerror)
        return []
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return parse(" ".join(lines), f"{PARAMETER} file {path}", nested=True)


def match(entries: list[Entry], key: str) -> Entry | None:
    """The entry that makes Postfix trust `key`, or None (first match decides)."""
    address = ipaddress.ip_address(key)
    for entry in entries:
        if address.version == entry.network.version and address in entry.network:
            return None if entry.negated else entry
    return None


class PostfixNetworks:
    """Postfix's mynetworks, asked of postconf the first time it is needed.

    A run that considers no new grant never runs postconf. If postconf is
    missing or fails, nothing counts as trusted: granting an address Postfix
    trusts anyway lets no one relay who could not before, so this fails open
    with a note under -v rather than stopping the grants.
    """

    def __init__(self) -> None:
        self._entries: list[Entry] | None = None
        # The IPv4 entries as number ranges, in order: asked for every login
        # read, this spares building an ipaddress object each time.
        self._ipv4: list[tuple[int, int, Entry]] = []

    def trusts(self, key: str) -> str | None:
        """The mynetworks entry that covers `key`, or None."""
        if self._entries is None:
            self._entries = self._load()
            self._ipv4 = [
                (
                    int(entry.network.network_address),
                    int(entry.network.broadcast_address),
                    entry,
                )
                for entry in self._entries
                if entry.network.version == 4
            ]
        number = ipv4_number(key)
        if number is None:
            found = match(self._entries, key)
        else:
            found = next(
                (entry for low, high, entry in self._ipv4 if low <= number <= high),
                None,
            )
            if found is not None and found.negated:
                found = None
        return found.text if found else None

    @staticmethod
    def _load() -> list[Entry]:
        try:
            value = postfix.postconf(PARAMETER, expand=True)
        except MapError as error:
            log.info("not checking Postfix's mynetworks: %s", error)
            return []
        entries = parse(value)
        log.debug("Postfix's mynetworks: %s", " ".join(e.text for e in entries))
        return entries
