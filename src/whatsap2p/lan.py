"""Which IP addresses are private LAN ones: behind a home or carrier router, reachable
only from the same network (RFC 1918, carrier-grade NAT, IPv6 unique local)."""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["LANS", "is_lan"]

LANS: Final = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


def is_lan(address: ipaddress.IPv4Address | ipaddress.IPv6Address | str) -> bool:
    """Whether `address` (an IP, or its text; anything else: False) is a LAN address."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address)
        except ValueError:
            return False
    return any(address in lan for lan in LANS)
