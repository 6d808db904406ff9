"""Which IP addresses are private LAN ones: behind a home or carrier router, reachable
only from the same network (RFC 1918, carrier-grade NAT, IPv6 unique local)."""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["IP", "LANS", "is_lan", "may_dial_back", "parse_ip"]

LANS: Final = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str) -> IP:
    """`text` as an IP address, an IPv4 one written as IPv6 (::ffff:a.b.c.d) as the
    IPv4 address it is; ValueError if it is none."""
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_lan(address: IP | str) -> bool:
    """Whether `address` (an IP, or its text; anything else: False) is a LAN address."""
    try:
        address = parse_ip(str(address))
    except ValueError:
        return False
    return any(address in lan for lan in LANS)


def may_dial_back(target: str, server: str) -> bool:
    """Whether a module connected to its server at `server` may connect back to `target`
    when the server asks (`dial`): the server hands out where it sees the asker, which
    means the asker only where the server is: loopback only with a server on this
    machine, a LAN address only with a server on a LAN (or this machine); never an
    unspecified, multicast or link-local address."""
    try:
        there, via = parse_ip(target), parse_ip(server)
    except ValueError:
        return False
    if there.is_unspecified or there.is_multicast or there.is_link_local:
        return False
    if there.is_loopback:
        return via.is_loopback
    if is_lan(there):
        return via.is_loopback or is_lan(via)
    return True
