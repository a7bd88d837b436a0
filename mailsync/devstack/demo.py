"""`mailsync up --demo`'s demo: a `demo` workspace with two fake mailboxes, a key, a first sync."""

from __future__ import annotations

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
            if apikeys.authenticate(session, existing) is not None:
                return existing
        _, plaintext = apikeys.create_api_key(
            session, WORKSPACE, ["write:email", "read:email"], name="demo"
        )
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
        ]
    )
