"""Maps a provider name to its implementation, imported lazily (client libraries load slowly)."""

from __future__ import annotations

from typing import Any

from mailsync.providers.base import MailProvider, ProviderEndpoints, ProviderOptions

PROVIDERS = ("gmail", "microsoft")


def open_provider(
    provider: str,
    address: str,
    credentials: dict[str, Any],
    endpoints: ProviderEndpoints,
    *,
    auth_state: str | None = None,
    options: ProviderOptions | None = None,
) -> MailProvider:
    options = options or ProviderOptions()
    if provider == "gmail":
        from mailsync.providers.gmail import GmailProvider

        return GmailProvider(
            address,
            credentials,
            endpoints,
            auth_state=auth_state,
            quota_units_per_minute=options.gmail_quota_units_per_minute,
            quota_window_s=options.gmail_quota_window_seconds,
        )
    if provider == "microsoft":
        from mailsync.providers.microsoft import MicrosoftProvider

        return MicrosoftProvider(
            address,
            credentials,
            endpoints,
            auth_state=auth_state,
            folders=options.microsoft_folders,
            page_size=options.microsoft_page_size,
        )
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


def revoke_grant(provider: str, credentials: dict[str, Any], endpoints: ProviderEndpoints) -> bool:
    """Revoke the mailbox's grant at its provider, where the provider has an endpoint for it:
    True when revoked, False when there is none (Microsoft revokes a user's sessions only, and
    app credentials are the tenant admin's). Raises ProviderError when the provider refuses."""
    if provider == "gmail":
        from mailsync.providers.gmail.revocation import revoke

        return revoke(credentials, endpoints)
    if provider == "microsoft":
        return False
    raise ValueError(f"unknown provider {provider!r}")


def preload() -> None:
    """Import every provider and its client libraries now, in a process that forks runs
    (mailsync/orchestration/zygote.py): each run then starts with them loaded, and they stay
    shared pages. Importing opens no socket and starts no thread."""
    from mailsync.providers import gmail, microsoft  # noqa: F401

    gmail.preload()
