"""Microsoft credentials: the two accepted shapes, checked and normalised; the scopes asked for."""

from __future__ import annotations

import re

APP_SCOPES = ["https://graph.microsoft.com/.default"]
DELEGATED_SCOPES = ["https://graph.microsoft.com/Mail.Read"]

_CREDENTIAL_FIELDS = {
    "client_credentials": ("tenant_id", "client_id", "client_secret"),
    "refresh_token": ("tenant_id", "client_id", "client_secret", "refresh_token"),
}
# Tenant ids are GUIDs or domain names; they end up in the authority URL path.
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def validate_credentials(credentials: dict) -> dict:
    """A normalised copy of Microsoft credentials, or ValueError naming the problem (never a value).

    Accepted shapes::

        {"type": "client_credentials", "tenant_id", "client_id", "client_secret"}
        {"type": "refresh_token", "tenant_id", "client_id", "client_secret", "refresh_token"}
    """
    if not isinstance(credentials, dict):
        raise ValueError("Microsoft credentials must be a JSON object")
    kind = credentials.get("type")
    if kind not in _CREDENTIAL_FIELDS:
        raise ValueError(
            "Microsoft credentials 'type' must be one of: " + ", ".join(sorted(_CREDENTIAL_FIELDS))
        )
    required = _CREDENTIAL_FIELDS[kind]
    unknown = sorted(set(credentials) - {"type", *required})
    if unknown:
        raise ValueError(f"unexpected field(s) in Microsoft {kind} credentials: {unknown}")
    normalised: dict[str, str] = {"type": kind}
    for name in required:
        value = credentials.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"Microsoft {kind} credentials need a non-empty string '{name}'")
        normalised[name] = value.strip()
    if not _TENANT_RE.match(normalised["tenant_id"]):
        raise ValueError("Microsoft 'tenant_id' must be a tenant GUID or domain name")
    return normalised
