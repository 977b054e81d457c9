"""Which webhook targets may be called: only public addresses, checked at submit and again
right before connecting (so a name that resolves elsewhere later, DNS rebinding, gets nowhere).

`public_addresses` resolves a host and refuses it when any address it resolves to is loopback,
private, link-local, multicast, reserved or unspecified (IPv4 and IPv6; an IPv6 address that
embeds an IPv4 one, as IPv4-mapped, IPv4-translated, 6to4 and NAT64 addresses do, is judged by
the IPv4 address). The delivery then connects to one of the addresses it returned, never to
the name (see `delivery.py`).
"""

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx2

RESOLVE_TIMEOUT_S = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


class TargetRefused(Exception):
    """The URL may not be called: a message for the client or the delivery log."""


@dataclass(frozen=True)
class Target:
    """A parsed webhook URL: the host as httpx2 will send it (IDNA-encoded), and its port."""

    url: httpx2.URL
    host: str
    port: int


def parse(url: str) -> Target:
    """The URL as the HTTP client reads it (the host it would connect to is what is checked)."""
    try:
        parsed = httpx2.URL(url)
    except (httpx2.InvalidURL, TypeError, ValueError) as exc:
        raise TargetRefused(f"webhook_url is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise TargetRefused("webhook_url must be an http or https URL")
    return Target(parsed, parsed.raw_host.decode("ascii"),
                  parsed.port or (443 if parsed.scheme == "https" else 80))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, where it stands for one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_TRANSLATED:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """A globally routable unicast address (ipaddress' is_global, minus multicast), judged by
    its IPv4 address when it embeds one."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None and not is_public(inner):
            return False
    return address.is_global and not address.is_multicast


def literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses of `host` (an IP literal is its own), in the resolver's order, without
    duplicates. A name that does not resolve in RESOLVE_TIMEOUT_S is refused."""
    address = literal(host)
    if address is not None:
        return [address]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except TimeoutError:
        raise TargetRefused(f"the host {host} did not resolve within "
                            f"{RESOLVE_TIMEOUT_S:g} s") from None
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"the host {host} does not resolve ({exc})") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        parsed = literal(str(sockaddr[0]))
        if parsed is not None and parsed not in found:
            found.append(parsed)
    if not found:
        raise TargetRefused(f"the host {host} has no address")
    return found


async def public_addresses(target: Target, *, allow_private: bool) -> list[IPAddress]:
    """Where `target` may be reached: every address its host resolves to, all of them public
    unless `allow_private` (else TargetRefused)."""
    addresses = await resolve(target.host, target.port)
    if not allow_private:
        refused = [str(a) for a in addresses if not is_public(a)]
        if refused:
            shown = target.host if literal(target.host) else f"{target.host} ({', '.join(refused)})"
            raise TargetRefused(f"webhook_url points to a non-public address: {shown}")
    return addresses
