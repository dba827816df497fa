"""The client's address behind trusted proxies (OPSPUSH_TRUST_PROXY).

X-Forwarded-For is a list each proxy appends its peer to; anything left of what our own
proxies appended was written by the client and proves nothing. So the walk goes from the
right and stops at the first address that is not one of our proxies: that is the client.
A peer that is not one of our proxies is the client, whatever it sends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TypeAlias

Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]
) -> str:
    """The address to count a connection against (pure: no I/O, no settings).

    `forwarded_for`: the values of every X-Forwarded-For header, in order.
    """
    if peer is None:
        return "unknown"
    believed = _parse(peer)
    if believed is None or not _trusted(believed, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            break  # not an address: keep the last hop we could believe
        believed = address
        if not _trusted(address, trusted):
            break
    return str(believed)


def trusted_peer(peer: str | None, trusted: Sequence[Network]) -> bool:
    """Whether the peer is one of our proxies (its connections carry many clients)."""
    address = None if peer is None else _parse(peer)
    return address is not None and _trusted(address, trusted)


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)


def _parse(text: str) -> Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
