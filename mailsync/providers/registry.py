"""Maps a provider name to its implementation, imported lazily (client libraries load slowly)."""

from __future__ import annotations

from typing import Any

from mailsync.providers.base import MailProvider, ProviderEndpoints

PROVIDERS = ("gmail", "microsoft")


def open_provider(
    provider: str, address: str, credentials: dict[str, Any], endpoints: ProviderEndpoints
) -> MailProvider:
    if provider == "gmail":
        from mailsync.providers.gmail import GmailProvider

        return GmailProvider(address, credentials, endpoints)
    if provider == "microsoft":
        from mailsync.providers.microsoft import MicrosoftProvider

        return MicrosoftProvider(address, credentials, endpoints)
    raise ValueError(f"unknown provider {provider!r}")


def validate_credentials(provider: str, credentials: dict[str, Any]) -> dict[str, Any]:
    """Check a credentials document's shape; errors never echo secret values."""
    if provider == "gmail":
        from mailsync.providers import gmail

        return gmail.validate_credentials(credentials)
    if provider == "microsoft":
        from mailsync.providers import microsoft

        return microsoft.validate_credentials(credentials)
    raise ValueError(f"unknown provider {provider!r}")
