"""Client addresses: the one spelling Postfix looks up, and the never-grant policy."""

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol

from popbs_tools.lazyre import LazyPattern

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Always refused, whatever the configuration: a grant for these would open the
# relay to the mail server's own processes or to nonsense.
BUILTIN_NEVER_GRANT: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

# Answers kept for the addresses seen last, IPv6 and odd spellings only: IPv4
# in smtpd's spelling takes a quick path. Cached too, IPv4 filled 65 536
# entries and made a scan's memory grow with its clients (issue 5, P4).
CACHED = 4096

# "This network" (RFC 1122): no client connects from there.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


# An IPv4 address as smtpd spells it: four decimal octets, no leading zeros.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_CANONICAL_IPV4 = LazyPattern(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def ipv4_number(text: str) -> int | None:
    """The address as a number if `text` is an IPv4 address spelt as smtpd
    spells it, else None.

    The grant file and most log lines hold such addresses; this is several
    times quicker than ipaddress, which matters at 100 000 grants (issue 5).
    """
    if _CANONICAL_IPV4.fullmatch(text) is None:
        return None
    first, second, third, fourth = text.split(".")
    return int(first) << 24 | int(second) << 16 | int(third) << 8 | int(fourth)


def ipv6_number(text: str) -> int | None:
    """The address as a number if `text` is an IPv6 address spelt as
    normalise() spells it (RFC 5952: compressed, lower case), else None.

    The C library parses it in a fraction of ipaddress's time; its spelling
    matches RFC 5952 except for embedded IPv4, which is left to ipaddress.
    """
    if "." in text or ":" not in text:
        return None
    import socket  # only where IPv6 addresses are: slow to import

    try:
        packed = socket.inet_pton(socket.AF_INET6, text)
    except OSError:
        return None
    if socket.inet_ntop(socket.AF_INET6, packed) != text:
        return None
    return int.from_bytes(packed, "big")


def normalise(text: str) -> str | None:
    """Return the key Postfix's smtpd looks up for this address, or None.

    Accepts what servers write: `[1.2.3.4]`, `::ffff:1.2.3.4`, upper-case or
    uncompressed IPv6. IPv4-mapped IPv6 becomes plain IPv4, because that is how
    smtpd reports such a client. Leading zeros, zone ids and anything else
    `ipaddress` rejects give None.
    """
    if _CANONICAL_IPV4.fullmatch(text) is not None or ipv6_number(text) is not None:
        return text
    return _normalise(text)


@lru_cache(maxsize=CACHED)
def _normalise(text: str) -> str | None:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    if _CANONICAL_IPV4.fullmatch(text) is not None:
        return text
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
        refusal = self.local_refusal(key)
        if refusal:
            return refusal
        entry = self.trusted_by_mta(key)
        return f"in Postfix's mynetworks ({entry})" if entry else None

    def local_refusal(self, key: str) -> str | None:
        """refusal() without asking the MTA: for grants already made, which
        every run checks again, so that a run with nothing new runs nothing."""
        number = ipv4_number(key)
        if number is not None:
            return self._ipv4_refusal(number)
        # Clients log in again and again: the answer is worth keeping.
        return _local_refusal(self, key)

    def trusted_by_mta(self, key: str) -> str | None:
        """The MTA's own entry that trusts `key` (a mynetworks entry), or None."""
        return self.trusted.trusts(key) if self.trusted is not None else None

    @cached_property
    def _ipv4_ranges(self) -> tuple[tuple[int, int, IPNetwork], ...]:
        return _ranges(self.never_grant)

    @cached_property
    def _ipv4_allowed(self) -> tuple[tuple[int, int, IPNetwork], ...]:
        return _ranges(self.allow)

    def _ipv4_refusal(self, number: int) -> str | None:
        """_local_refusal's answers for an IPv4 address, without building one."""
        first = number >> 24
        if first == 127:
            return "loopback address"
        if first == 0:
            return "unspecified address"
        if 224 <= first < 240:
            return "multicast address"
        if first >= 240:
            return "reserved address"
        for low, high, network in self._ipv4_ranges:
            if low <= number <= high:
                return f"in never-grant network {network}"
        if self.allow and not any(
            low <= number <= high for low, high, _ in self._ipv4_allowed
        ):
            return "outside the allow-list"
        return None


def _ranges(networks: Iterable[IPNetwork]) -> tuple[tuple[int, int, IPNetwork], ...]:
    """The IPv4 networks among `networks` as (first, last, network) numbers."""
    return tuple(
        (int(network.network_address), int(network.broadcast_address), network)
        for network in networks
        if network.version == 4
    )


@lru_cache(maxsize=CACHED)
def _local_refusal(policy: Policy, key: str) -> str | None:
    number = ipv6_number(key)
    address = (
        ipaddress.ip_address(key) if number is None else ipaddress.IPv6Address(number)
    )
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
