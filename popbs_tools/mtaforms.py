"""Each MTA's spelling of a grant: the lines popbs derives from the grant file.

Postfix looks up the grant file itself. Sendmail, Exim and qmail each key
their tables by their own text form of the client's address, and a form that
differs by one character never matches; these functions write that form.
"""

import ipaddress
import logging
from collections.abc import Iterable

from popbs_tools.grants import Grants, sort_key

log = logging.getLogger(__name__)

HEADER = "# popbs-tools: derived from the grant file by popbs; do not edit.\n"


def _groups(address: ipaddress.IPv6Address) -> list[int]:
    value = int(address)
    return [(value >> (112 - 16 * index)) & 0xFFFF for index in range(8)]


def _sorted(
    table: Grants,
) -> Iterable[tuple[str, int, ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    for key in sorted(table, key=sort_key):
        yield key, table[key], ipaddress.ip_address(key)


def sendmail_key(key: str) -> str:
    """The access(5) key Sendmail looks up for a client at `key`.

    Sendmail tags IPv6 with "IPv6:" and, unless UseCompressedIPv6Addresses is
    set, spells it with all eight groups and no "::" (cf/README). The full form
    is also the safe one: Sendmail retries a lookup with trailing groups cut
    off, and eight groups can never be such a shortened address.
    """
    address = ipaddress.ip_address(key)
    if address.version == 4:
        return f"Connect:{address}"
    assert isinstance(address, ipaddress.IPv6Address)
    return "Connect:IPv6:" + ":".join(f"{group:x}" for group in _groups(address))


def sendmail_access(table: Grants, local: bytes = b"") -> bytes:
    """access(5) lines for `makemap hash`: `Connect:IP<TAB>RELAY`.

    The admin's own lines (`local`) come first. makemap refuses a duplicate
    key, so a grant whose key they hold is left out: their entry wins.
    """
    taken = set()
    for raw in local.decode("utf-8", "replace").splitlines():
        fields = raw.split()
        if fields and not raw.startswith("#"):
            # makemap folds keys to lower case, and so does Sendmail's lookup.
            taken.add(fields[0].lower())

    lines = [HEADER, _with_newline(local)]
    for key, _, _ in _sorted(table):
        spelled = sendmail_key(key)
        if spelled.lower() not in taken:
            lines.append(f"{spelled}\tRELAY\n")
    return "".join(lines).encode()


def _with_newline(local: bytes) -> str:
    text = local.decode("utf-8", "replace")
    return text if not text or text.endswith("\n") else text + "\n"


def exim_key(key: str) -> str:
    """The key a net-lsearch host list looks up for a client at `key`.

    Exim's spec (10.13): an IPv6 address is written unabbreviated, in lower
    case, with dots for colons, because a colon ends an lsearch key.
    """
    address = ipaddress.ip_address(key)
    if address.version == 4:
        return str(address)
    return address.exploded.replace(":", ".")


def exim_lsearch(table: Grants) -> bytes:
    """`KEY: TIME` lines; Exim gives TIME to the ACL as $host_data."""
    lines = [HEADER]
    lines += [f"{exim_key(key)}: {when}\n" for key, when, _ in _sorted(table)]
    return "".join(lines).encode()


def ucspi_ipv6(address: ipaddress.IPv6Address) -> str:
    """How ucspi-tcp's IPv6 patch spells TCPREMOTEIP (its ip6_fmt).

    Like RFC 5952 except that a single zero group is compressed too.
    """
    groups = _groups(address)
    start, length = -1, 0
    index = 0
    while index < 8:
        end = index
        while end < 8 and groups[end] == 0:
            end += 1
        if end - index > length:
            start, length = index, end - index
        index = max(end, index + 1)
    if not length:
        return ":".join(f"{group:x}" for group in groups)
    head = ":".join(f"{group:x}" for group in groups[:start])
    tail = ":".join(f"{group:x}" for group in groups[start + length :])
    return f"{head}::{tail}"


def qmail_keys(key: str) -> list[str]:
    """The tcprules addresses for `key`: one for IPv4, one or two for IPv6.

    IPv6 gets both ucspi-tcp-ipv6's spelling and RFC 5952's (other IPv6
    ports of tcpserver follow it) when they differ. tcpserver also tries the
    client's address cut after each separator, so a key that ends in ":"
    would match a whole network: such a spelling is left out.
    """
    address = ipaddress.ip_address(key)
    if isinstance(address, ipaddress.IPv4Address):
        return [str(address)]
    forms = dict.fromkeys([ucspi_ipv6(address), address.compressed])
    return [form for form in forms if not form.endswith(":")]


def qmail_rules(table: Grants, local: bytes = b"", ipv6: bool = True) -> bytes:
    """tcprules lines, `IP:allow,RELAYCLIENT=""`; without `ipv6`, IPv4 only.

    The admin's own rules (`local`) come first: tcpserver follows the first
    rule for an address, so theirs wins over a grant.
    """
    lines = [HEADER, _with_newline(local)]
    for key, _, address in _sorted(table):
        if address.version == 6 and not ipv6:
            continue
        keys = qmail_keys(key)
        if not keys:
            log.warning("not granting %s for qmail: tcprules cannot key it", key)
        lines += [f'{form}:allow,RELAYCLIENT=""\n' for form in keys]
    return "".join(lines).encode()
