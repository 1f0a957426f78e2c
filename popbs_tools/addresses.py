"""Client addresses: the one spelling Postfix looks up, and the never-grant policy."""

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Always refused, whatever the configuration: a grant for these would open the
# relay to the mail server's own processes or to nonsense.
BUILTIN_NEVER_GRANT: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

# "This network" (RFC 1122): no client connects from there.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


@lru_cache(maxsize=65536)
def normalise(text: str) -> str | None:
    """Return the key Postfix's smtpd looks up for this address, or None.

    Accepts what servers write: `[1.2.3.4]`, `::ffff:1.2.3.4`, upper-case or
    uncompressed IPv6. IPv4-mapped IPv6 becomes plain IPv4, because that is how
    smtpd reports such a client. Leading zeros, zone ids and anything else
    `ipaddress` rejects give None.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None

    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return address.compressed
    return str(address)


def parse_network(text: str) -> IPNetwork:
    """Parse a CIDR (or a bare address) given as a never-grant setting."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        # Postfix writes IPv6 networks as [2001:db8::]/32.
        text = text[1:].replace("]", "", 1)
    network = ipaddress.ip_network(text, strict=False)
    mapped = ipaddress.IPv6Network("::ffff:0:0/96")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
        # Keys are stored with IPv4-mapped addresses reduced to IPv4: so must
        # the network be, or it would never match.
        first = network.network_address.ipv4_mapped
        assert first is not None
        return ipaddress.ip_network(f"{first}/{network.prefixlen - 96}")
    return network


class Trusted(Protocol):
    """Networks the MTA trusts by itself (see mynetworks.PostfixNetworks)."""

    def trusts(self, key: str) -> str | None: ...


@dataclass(frozen=True)
class Policy:
    """Which addresses may never be granted."""

    never_grant: tuple[IPNetwork, ...] = BUILTIN_NEVER_GRANT
    # When not empty, only addresses inside these networks are granted.
    allow: tuple[IPNetwork, ...] = ()
    # Asked last, and only for an address every other rule lets through:
    # it may run a program (postconf).
    trusted: Trusted | None = None

    @classmethod
    def with_extra(
        cls,
        extra: Iterable[IPNetwork],
        allow: Iterable[IPNetwork] = (),
        trusted: Trusted | None = None,
    ) -> "Policy":
        return cls(BUILTIN_NEVER_GRANT + tuple(extra), tuple(allow), trusted)

    def refusal(self, key: str) -> str | None:
        """Why `key` (a normalised address) must not be granted, or None."""
        # Clients log in again and again: the answer is worth keeping.
        return _refusal(self, key)

    def local_refusal(self, key: str) -> str | None:
        """refusal() without asking the MTA: for grants already made, which
        every run checks again, so that a run with nothing new runs nothing."""
        return _local_refusal(self, key)

    def trusted_by_mta(self, key: str) -> str | None:
        """The MTA's own entry that trusts `key` (a mynetworks entry), or None."""
        return self.trusted.trusts(key) if self.trusted is not None else None


@lru_cache(maxsize=65536)
def _refusal(policy: Policy, key: str) -> str | None:
    refusal = _local_refusal(policy, key)
    if refusal:
        return refusal
    entry = policy.trusted_by_mta(key)
    if entry:
        return f"in Postfix's mynetworks ({entry})"
    return None


@lru_cache(maxsize=65536)
def _local_refusal(policy: Policy, key: str) -> str | None:
    address = ipaddress.ip_address(key)
    if address.is_loopback:
        return "loopback address"
    if address.is_unspecified or address in _THIS_NETWORK:
        return "unspecified address"
    if address.is_multicast:
        return "multicast address"
    if address.is_reserved:
        # 240.0.0.0/4 with the broadcast address, and IPv6's ::/8 with the
        # deprecated IPv4-compatible ::127.0.0.1: no client comes from there.
        return "reserved address"
    for network in policy.never_grant:
        if address.version == network.version and address in network:
            return f"in never-grant network {network}"
    if policy.allow and not any(
        address.version == network.version and address in network
        for network in policy.allow
    ):
        return "outside the allow-list"
    return None
