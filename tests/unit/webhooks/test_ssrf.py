"""The SSRF guard: receivers at loopback, private, link-local or metadata addresses are refused."""

from __future__ import annotations

import ipaddress

import pytest

from mailsync.errors import UnsafeUrlError
from mailsync.webhooks.ssrf import refusal, vet


def resolver_for(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError("no such host")
        return table[host]

    return resolve


REFUSED = [
    "https://127.0.0.1/hook",
    "https://127.1.2.3:8443/hook",
    "https://localhost/hook",
    "https://10.0.0.1/",
    "https://10.255.255.254/",
    "https://172.16.0.1/",
    "https://172.31.255.255/",
    "https://192.168.1.10/",
    "https://169.254.169.254/latest/meta-data/",
    "https://169.254.1.1/",
    "https://100.64.0.1/",  # carrier-grade NAT
    "https://0.0.0.0/",
    "https://[::1]/",
    "https://[fc00::1]/",
    "https://[fd12:3456::1]/",
    "https://[fe80::1]/",
    "https://[fd00:ec2::254]/",  # AWS metadata over IPv6
    "https://[::ffff:127.0.0.1]/",  # IPv4-mapped IPv6
    "https://[::ffff:10.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "https://2130706433/",  # 127.0.0.1 as one decimal number
    "https://0x7f000001/",  # ... in hex
    "https://0x7f.1/",
    "https://0177.0.0.1/",  # ... in octal
    "https://3232235777/",  # 192.168.1.1
    "https://0xa9fea9fe/",  # 169.254.169.254
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_addresses_in_any_notation_are_refused(url: str) -> None:
    """Whatever the notation, the address the host resolves to decides, and it is refused
    (or the URL parser already rejects the notation, as it does octal)."""
    with pytest.raises(UnsafeUrlError, match="resolves to|Invalid IPv4"):
        vet(url)


def test_a_name_resolving_to_any_private_address_is_refused() -> None:
    """One private address among public ones is enough: a resolver may return either."""
    resolve = resolver_for({"mixed.example": ["93.184.215.14", "10.1.2.3"]})
    with pytest.raises(UnsafeUrlError, match="private"):
        vet("https://mixed.example/hook", resolver=resolve)


def test_a_public_https_url_is_accepted_and_pinned_to_its_address() -> None:
    """The vetted address is the one connected to; Host and TLS keep the registered name."""
    resolve = resolver_for({"hooks.example.com": ["93.184.215.14"]})
    vetted = vet("https://hooks.example.com:8443/in?x=1", resolver=resolve)
    assert str(vetted.pinned) == "https://93.184.215.14:8443/in?x=1"
    assert vetted.host_header == "hooks.example.com:8443"
    assert vet("https://hooks.example.com/", resolver=resolve).host_header == "hooks.example.com"


def test_http_is_refused_without_the_loopback_setting() -> None:
    """Plain http is for local receivers only: refused unless the setting allows loopback."""
    resolve = resolver_for({"hooks.example.com": ["93.184.215.14"]})
    with pytest.raises(UnsafeUrlError, match="https"):
        vet("http://hooks.example.com/", resolver=resolve)
    with pytest.raises(UnsafeUrlError, match="https"):
        vet("http://127.0.0.1:9000/")


def test_the_loopback_setting_allows_loopback_only() -> None:
    """MAILSYNC_WEBHOOK_ALLOW_LOOPBACK opens 127/8 and ::1 (and http), nothing else."""
    assert str(vet("http://127.0.0.1:9000/h", allow_loopback=True).address) == "127.0.0.1"
    assert str(vet("https://[::1]:9000/h", allow_loopback=True).address) == "::1"
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://192.168.0.1/"):
        with pytest.raises(UnsafeUrlError):
            vet(url, allow_loopback=True)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/",
        "file:///etc/passwd",
        "https://user:pass@hooks.example.com/",
        "https:///no-host",
        "not a url",
        "",
        "https://hooks.example.com/" + "a" * 2048,
    ],
)
def test_malformed_urls_are_refused_with_a_reason(url: str) -> None:
    """Bad schemes, credentials in the URL, missing hosts and huge URLs are refused."""
    resolve = resolver_for({"hooks.example.com": ["93.184.215.14"]})
    with pytest.raises(UnsafeUrlError):
        vet(url, resolver=resolve)


def test_unresolvable_hosts_are_refused() -> None:
    """A host that does not resolve cannot be vetted, so it is refused."""
    with pytest.raises(UnsafeUrlError, match="could not be resolved"):
        vet("https://nowhere.invalid/", resolver=resolver_for({}))


def test_refusal_reasons_name_the_kind_of_address() -> None:
    """The 400 says why: metadata, loopback, private, link-local."""
    ip = ipaddress.ip_address
    assert refusal(ip("169.254.169.254")) == "a cloud metadata address"
    assert refusal(ip("::ffff:127.0.0.1")) == "a loopback address"
    assert refusal(ip("192.168.0.1")) == "a private address"
    assert refusal(ip("fe80::1")) == "a link-local address"
    assert refusal(ip("93.184.215.14")) is None
    assert refusal(ip("2606:4700::1111")) is None
