"""Which address the directory may hand out for a module: only one it can vouch for.

Whoever looks a number up connects where the directory says, so a registration may not
point them anywhere it likes (a multicast group, a cloud's metadata service, a host name
resolved on the looker's say, junk for their terminal). The address published is the one
the server sees the module connect from, unless the module advertises another (a
forwarded port, `--advertise`), which must be an IP literal of a unicast host:
- never unspecified, multicast, link-local, reserved or broadcast;
- loopback only from a module that itself connects from loopback (the same machine);
- a private LAN address (RFC 1918, carrier-grade NAT, IPv6 unique local) only from a
  module the server sees at a non-public address too (the server on that LAN).
"""

from __future__ import annotations

import ipaddress

from whatsap2p.lan import is_lan, parse_ip

__all__ = ["InvalidHost", "reachable_from", "vouched_host", "vouched_local"]


class InvalidHost(ValueError):
    """An advertised host the directory will not hand out; the text says why."""


def _ip_literal(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """`text` as an IP address, or InvalidHost saying `what` must be one (the text shown
    escaped and cut short: it is a stranger's)."""
    try:
        return parse_ip(text)
    except ValueError:
        shown = text[:64].encode("unicode_escape").decode("ascii")
        raise InvalidHost(f"{what} must be an IP address, not {shown!r}") from None


def _public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not (address.is_loopback or is_lan(address))


def vouched_host(advertised: str | None, observed: str) -> str:
    """The host to publish for a module the server sees at `observed` that advertised
    `advertised` (None: the observed one); InvalidHost with why not."""
    if advertised is None:
        return observed
    address = _ip_literal(advertised, "an advertised host")
    if (
        address.is_unspecified
        or address.is_multicast
        or address.is_link_local
        or (address.is_reserved and not address.is_loopback)
    ):
        raise InvalidHost(f"{address} is not an address a peer can connect to")
    try:
        seen = parse_ip(observed)
    except ValueError:  # (an in-memory network's host name in tests, say)
        seen = None
    if address.is_loopback and not (seen is not None and seen.is_loopback):
        raise InvalidHost(f"{address} is loopback, and this module is not on this machine")
    if not _public(address) and not address.is_loopback and (seen is None or _public(seen)):
        raise InvalidHost(
            f"{address} is a private address, and the server sees this module at a public"
            f" one ({observed}): peers elsewhere could not reach it"
        )
    return str(address)


def vouched_local(local: str | None, observed: str, published: str) -> str | None:
    """The LAN address to keep for a module the server sees at `observed`, published at
    `published`, that says it is at `local` on its own network: None when there is none
    to keep (none said; the server sees the module on a LAN or loopback itself, where
    its published address is the way in; or it advertised another address, which says
    nothing of who is behind the same router); InvalidHost when it is not a LAN address.
    (Lookers are given it only from `published`, which is then the address the server
    sees the module at: its router.)"""
    if local is None:
        return None
    address = _ip_literal(local, "a local address")
    if not is_lan(address):
        raise InvalidHost(f"{address} is not a private LAN address")
    try:
        seen = parse_ip(observed)
    except ValueError:
        return None
    if not _public(seen) or published != observed:
        return None
    return str(address)


def reachable_from(asker: str, callee: str) -> bool:
    """Whether a module the server sees at `callee` may be asked to connect to `asker`
    (the address the server sees the asker at): a public address, always; loopback only
    from loopback (both on the server's machine); a LAN address only from a LAN address
    (both on the server's LAN). Otherwise the asker's address would mean the callee's own
    machine or network, not the asker."""
    try:
        there, here = parse_ip(asker), parse_ip(callee)
    except ValueError:  # (an in-memory network's host name in tests, say)
        return asker == callee or not (is_lan(asker) or asker.startswith("127."))
    if there.is_loopback:
        return here.is_loopback
    if is_lan(there):
        return is_lan(here)
    return not (there.is_unspecified or there.is_multicast or there.is_link_local)
