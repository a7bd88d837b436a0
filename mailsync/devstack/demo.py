"""`mailsync up --demo`'s demo: a `demo` workspace with two fake mailboxes, a key, a first sync."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console

from mailsync import db
from mailsync.core import apikeys, workspaces
from mailsync.core.push import channels
from mailsync.db import session_scope
from mailsync.db.crypto import CredentialBox
from mailsync.devstack.fakes import Fakes
from mailsync.orchestration.orchestrator import Orchestrator
from mailsync.settings import Settings

WORKSPACE = "demo"
GMAIL_ADDRESS = "demo.user@gmail.example"
MICROSOFT_ADDRESS = "demo.user@contoso.example"

# The demo's push: Gmail watches publish to this topic of the fake Pub/Sub, whose push
# subscription (with authentication, as this service account) posts to our API.
PUSH_TOPIC = "projects/mailsync-demo/topics/gmail"
PUSH_SUBSCRIPTION = "projects/mailsync-demo/subscriptions/gmail-push"
PUSH_ACCOUNT = "gmail-push@mailsync-demo.iam.gserviceaccount.com"

# How the demo follows its first sync to the end: (settings, orchestrator, job id); the CLI
# passes its progress display (mailsync/cli/progress.py).
FollowJob = Callable[[Settings, Orchestrator, str], object]

console = Console()


def fake_account(base_url: str, ca_path: Path, address: str) -> dict[str, object]:
    """Ask a fake for a mailbox and the credentials that open it."""
    response = httpx.post(
        f"{base_url}/_admin/mailboxes",
        json={"address": address},
        verify=str(ca_path),
        trust_env=False,
        timeout=30,
    )
    response.raise_for_status()
    credentials: dict[str, object] = response.json()["credentials"]
    return credentials


def landing_page(api: str) -> str:
    """Where the demo's consent flow ends (the API docs, mailbox_id in the address bar)."""
    return f"{api}/docs"


def consent_env(fakes: Fakes, api: str) -> dict[str, str]:
    """The API's consent settings for the demo: an OAuth client registered with the fake
    Google, the demo Microsoft tenant's own app, the API as the public URL."""
    trust = {"verify": str(fakes.ca_path), "trust_env": False, "timeout": 30}
    response = httpx.post(
        f"{fakes.gmail_url}/_admin/oauth-clients",
        json={"redirect_uris": [f"{api}/v1/oauth/callback"]},
        **trust,  # type: ignore[arg-type]
    )
    response.raise_for_status()
    google = response.json()
    tenant = fake_account(fakes.microsoft_url, fakes.ca_path, MICROSOFT_ADDRESS)
    return {
        "MAILSYNC_GOOGLE_CLIENT_ID": google["client_id"],
        "MAILSYNC_GOOGLE_CLIENT_SECRET": google["client_secret"],
        "MAILSYNC_MICROSOFT_CLIENT_ID": str(tenant["client_id"]),
        "MAILSYNC_MICROSOFT_CLIENT_SECRET": str(tenant["client_secret"]),
        "MAILSYNC_MICROSOFT_TENANT": str(tenant["tenant_id"]),
        "MAILSYNC_PUBLIC_URL": api,
        "MAILSYNC_OAUTH_REDIRECT_ALLOWLIST": landing_page(api),
    }


def connect_url(api: str, key: str, fakes: Fakes) -> tuple[str, str]:
    """A new fake Gmail mailbox and a ready consent URL for it (the fake approves at once:
    its login_hint names the mailbox), through the API as an application would ask."""
    address = f"new.user.{secrets.token_hex(3)}@gmail.example"
    fake_account(fakes.gmail_url, fakes.ca_path, address)
    response = httpx.post(
        f"{api}/v1/mailboxes/connect",
        json={"provider": "gmail", "redirect_uri": landing_page(api), "login_hint": address},
        headers={"Authorization": f"Bearer {key}"},
        trust_env=False,
        timeout=30,
    )
    response.raise_for_status()
    return address, str(response.json()["data"]["authorization_url"])


DEMO_SCOPES = ["write:email", "read:email", "read:mailboxes", "write:mailboxes"]


def push_env(settings: Settings, port: int) -> dict[str, str]:
    """Push on for the demo's API and workers: the fakes reach the API on the loopback
    (what a deployment would give as its public HTTPS URL), unless configured otherwise."""
    return {
        "MAILSYNC_PUSH_PUBLIC_URL": settings.push_public_url
        or f"http://{settings.api_host}:{port}",
        "MAILSYNC_GMAIL_PUBSUB_TOPIC": settings.gmail_pubsub_topic or PUSH_TOPIC,
        "MAILSYNC_GMAIL_PUSH_SERVICE_ACCOUNT": settings.gmail_push_service_account or PUSH_ACCOUNT,
    }


def start_push(settings: Settings, fakes: Fakes, api: str) -> str:
    """The fake Pub/Sub's push subscription to our API, then the demo mailboxes' Gmail watch
    and Graph subscription (the refresh rounds renew them); a line saying how it went."""
    env = push_env(settings, 0) | {"MAILSYNC_PUSH_PUBLIC_URL": settings.push_public_url or api}
    response = httpx.put(
        f"{fakes.gmail_url}/_admin/pubsub/subscriptions",
        json={
            "name": PUSH_SUBSCRIPTION,
            "topic": env["MAILSYNC_GMAIL_PUBSUB_TOPIC"],
            "endpoint": f"{env['MAILSYNC_PUSH_PUBLIC_URL']}/v1/push/gmail",
            "service_account": env["MAILSYNC_GMAIL_PUSH_SERVICE_ACCOUNT"],
        },
        verify=str(fakes.ca_path),
        trust_env=False,
        timeout=30,
    )
    response.raise_for_status()
    pushing = settings.model_copy(
        update={
            "push_public_url": env["MAILSYNC_PUSH_PUBLIC_URL"],
            "gmail_pubsub_topic": env["MAILSYNC_GMAIL_PUBSUB_TOPIC"],
            "gmail_push_service_account": env["MAILSYNC_GMAIL_PUSH_SERVICE_ACCOUNT"],
            "gmail_push_certs_url": f"{fakes.gmail_url}/oauth2/v1/certs",
            "google_token_uri": f"{fakes.gmail_url}/token",
            "gmail_api_url": f"{fakes.gmail_url}/",
            "microsoft_authority_host": fakes.microsoft_url,
            "graph_api_url": f"{fakes.microsoft_url}/v1.0",
            "provider_ca_bundle": fakes.ca_path,
        }
    )
    counts = channels.maintain(pushing, workspaces=[WORKSPACE]).counts()
    return f"push: {counts['opened']} channels opened, {counts['failed']} failed"


def seed_workspace(settings: Settings, fakes: Fakes) -> str:
    """Create the demo workspace, connect both fake mailboxes; return the demo API key."""
    box = CredentialBox(settings.fernet_key())
    key_file = settings.data_dir / "demo-api-key"
    with session_scope(settings.resolved_database_url) as session:
        workspaces.create_workspace(session, WORKSPACE, "Demo workspace")
        for provider, url, address in (
            ("gmail", fakes.gmail_url, GMAIL_ADDRESS),
            ("microsoft", fakes.microsoft_url, MICROSOFT_ADDRESS),
        ):
            credentials = fake_account(url, fakes.ca_path, address)
            workspaces.connect_mailbox(session, box, WORKSPACE, provider, address, credentials)
        if key_file.exists():
            existing = key_file.read_text().strip()
            principal = apikeys.authenticate(session, existing)
            if principal is not None and principal.scopes >= set(DEMO_SCOPES):
                return existing
        _, plaintext = apikeys.create_api_key(session, WORKSPACE, DEMO_SCOPES, name="demo")
    key_file.write_text(plaintext + "\n")
    key_file.chmod(0o600)
    return plaintext


def run_demo(
    settings: Settings, fakes: Fakes, api: str, prefect_api: str, follow: FollowJob
) -> str:
    """Seed the demo workspace, sync it once (followed by `follow`); return what to print:
    the demo key and the spec's curl example against `api`."""
    key = seed_workspace(settings, fakes)
    orchestrator = Orchestrator(prefect_api, settings)
    try:
        with db.session_scope(settings.resolved_database_url) as session:
            job = orchestrator.trigger(session, WORKSPACE, "incremental", None, trigger="cli")
        console.print(f"initial sync of the demo mailboxes: {job.id}")
        follow(settings, orchestrator, job.id)
    finally:
        orchestrator.close()
    console.print(start_push(settings, fakes, api))
    address, consent = connect_url(api, key, fakes)
    curl = (
        f"curl -X POST {api}/v1/email/sync \\\n"
        f'  -H "Authorization: Bearer {key}" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        "  -d '{}'"
    )
    return "\n".join(
        [
            f"demo API key (also in {settings.data_dir / 'demo-api-key'}):",
            key,
            "",
            "trigger a sync (the spec's example):",
            curl,
            "",
            "then follow the job:",
            f'curl -H "Authorization: Bearer {key}" {api}/v1/email/sync/<job_id>',
            "",
            "push is on: a message added at a fake is synced within seconds, e.g.",
            f"curl -k -X POST {fakes.gmail_url}/_admin/mailboxes/{GMAIL_ADDRESS}/messages "
            "-H 'Content-Type: application/json' -d '{\"count\": 1}'",
            "",
            f"connect a new mailbox ({address}) the way users do: open this consent URL",
            "(the fake Google approves at once and you land on the API docs with mailbox_id):",
            consent,
            "",
            "then see it:",
            f'curl -H "Authorization: Bearer {key}" {api}/v1/mailboxes',
            "",
        ]
    )
