"""Which IP addresses a crawler must never connect to.

A URL list scraped from the web can point anywhere, including at the machine
doing the crawling (loopback), its private network, or the cloud metadata
service at 169.254.169.254 that hands out credentials. Both stage 1 (URL checks)
and stage 2 (every connection the downloader opens, after DNS and after each
redirect) ask the same question, so the answer lives here as pure functions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowNetworkError(ValueError):
    """An ``allow_networks`` entry that is not a CIDR network."""


@lru_cache(maxsize=64)
def parse_networks(allow_networks: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """Parse CIDR strings once; a bad entry names itself so the config can be fixed."""
    nets = []
    for text in allow_networks:
        try:
            nets.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as err:
            raise AllowNetworkError(
                f"filters.urls.allow_networks entry {text!r} is not a network "
                f"(write it like '127.0.0.0/8' or '10.1.2.3/32'): {err}"
            ) from None
    return tuple(nets)


def parse_ip(text: str) -> IPAddress | None:
    """Parse an address as getaddrinfo or a URL host gives it; None if it is not one.

    Strips IPv6 brackets and zone ids (``fe80::1%eth0``) and unwraps IPv4-mapped
    IPv6 (``::ffff:10.0.0.1``) so a private IPv4 address cannot hide in IPv6 form.
    """
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_non_public(ip: IPAddress) -> bool:
    """True for loopback, private, link-local, multicast, reserved, unspecified
    and every other range that is not globally routable (CGNAT, documentation...)."""
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")


def embedded_ipv4(ip: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 addresses an IPv6 address carries inside it and may be routed to.

    6to4 (2002::/16) and NAT64 (64:ff9b::/96) gateways forward to the IPv4
    address written in the IPv6 one, and Teredo (2001::/32) names a server and
    a client IPv4; a private IPv4 must not reach the crawler through any of them.
    """
    if not isinstance(ip, ipaddress.IPv6Address):
        return ()
    found: list[ipaddress.IPv4Address] = []
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64_WELL_KNOWN:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return tuple(found)


def _allowed(addr: IPAddress, allow_networks: Iterable[str]) -> bool:
    return any(
        addr.version == net.version and addr in net
        for net in parse_networks(tuple(allow_networks))
    )


def is_blocked_address(ip: str, allow_networks: Iterable[str] = ()) -> bool:
    """True if a crawler must not connect to ``ip``.

    Non-public addresses are blocked unless one of ``allow_networks`` (CIDR
    strings, e.g. ``["127.0.0.0/8"]`` in tests) contains them; an IPv6 address
    that embeds a blocked IPv4 (6to4, Teredo, NAT64) is blocked too. A string
    that is not an IP address at all is blocked: the caller must resolve names first.
    """
    addr = parse_ip(ip)
    if addr is None:
        return True
    for inner in embedded_ipv4(addr):
        if is_non_public(inner) and not _allowed(inner, allow_networks):
            return True
    return is_non_public(addr) and not _allowed(addr, allow_networks)
