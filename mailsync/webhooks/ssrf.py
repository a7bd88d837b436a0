"""Keeps webhook URLs from reaching into mailsync's own network (SSRF).

A URL is vetted by resolving its host and refusing it if any address is loopback, private,
link-local, a cloud metadata address or otherwise not public. Vetting happens when the
endpoint is created and again before every attempt (DNS can change), and the attempt then
connects to the address that was vetted, so a second lookup cannot swap it (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from mailsync.errors import UnsafeUrlError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048
# Named so the refusal says why; all of them are non-public anyway.
_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud
}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class VettedUrl:
    url: httpx.URL
    address: IPAddress  # the one the attempt connects to

    @property
    def pinned(self) -> httpx.URL:
        """The URL with its host replaced by the vetted address."""
        return self.url.copy_with(host=str(self.address))

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}[self.url.scheme]
        port = self.url.port
        host = self.url.host
        host = f"[{host}]" if ":" in host else host
        return host if port in (None, default) else f"{host}:{port}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    # IPv6 forms that carry an IPv4 address the packets end up at.
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def refusal(ip: IPAddress, *, allow_loopback: bool = False) -> str | None:
    """Why a receiver at this address is refused, or None when it may be called."""
    ip = _embedded_ipv4(ip)
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or not ip.is_global:
        return "a non-public address"
    return None


def parse(url: str, *, allow_loopback: bool = False) -> httpx.URL:
    """Check the URL's form: https (http only with allow_loopback), a host, no credentials."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeUrlError(f"url must be an absolute URL of at most {MAX_URL_LENGTH} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise UnsafeUrlError(f"url is not a valid URL: {exc}") from exc
    allowed = ("https", "http") if allow_loopback else ("https",)
    if parsed.scheme not in allowed:
        raise UnsafeUrlError("url must use https")
    if not parsed.host:
        raise UnsafeUrlError("url must name a host")
    if parsed.userinfo:
        raise UnsafeUrlError("url must not carry credentials (user:password@)")
    return parsed


def vet(
    url: str, *, allow_loopback: bool = False, resolver: Resolver = system_resolver
) -> VettedUrl:
    """Parse, resolve and vet a URL; raises UnsafeUrlError with the reason."""
    parsed = parse(url, allow_loopback=allow_loopback)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        found = resolver(parsed.host, port)
    except (OSError, UnicodeError) as exc:
        raise UnsafeUrlError(f"url host {parsed.host!r} could not be resolved") from exc
    addresses: list[IPAddress] = []
    for raw in found:
        ip = ipaddress.ip_address(raw.split("%", 1)[0])  # drop an IPv6 zone id
        reason = refusal(ip, allow_loopback=allow_loopback)
        if reason:
            # Refused if any address is: a resolver may hand out either one.
            raise UnsafeUrlError(f"url host {parsed.host!r} resolves to {reason} ({ip})")
        addresses.append(ip)
    if not addresses:
        raise UnsafeUrlError(f"url host {parsed.host!r} could not be resolved")
    return VettedUrl(parsed, addresses[0])
