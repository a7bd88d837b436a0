"""Full-sync throughput and peak memory: our pipeline beside the bare client libraries.

Each measurement runs in a freshly spawned interpreter (its peak RSS is its own), against
fakes served from this process. "raw" is the same client library (google-api-python-client
with batches of 50 / httpx + msal on Graph delta) fetching the same messages with nothing of
ours around it: no pacing, retries, checkpoints or index writes. "pipeline" is what a full
sync job runs (`core.sync.engine.sync_mailbox`, SQLite index); "no search index" is the same
without the full-text index's upkeep, for the share of throughput search costs; "PostgreSQL"
is the pipeline into a new PostgreSQL database that no ANALYZE has seen (a first sync, where
statistics-driven plans go wrong), with and without its search index. Every figure is the
median of rounds run one after another (ROUNDS), as the machine's pace drifts. Gmail pacing is
switched off on both sides; the quota benchmark measures pacing.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import harness
from mailsync.fakes.client import GmailAdmin, MicrosoftAdmin
from mailsync.providers.base import ProviderEndpoints, ProviderOptions

SIZES = {"tiny": [300], "small": [10_000], "full": [10_000, 100_000]}
ROUNDS = {"tiny": 1, "small": 3, "full": 3}  # of each measurement; medians reported
UNPACED = 10**9
MICROSOFT_FOLDERS = ("inbox", "sentitems")


def _pipeline(
    endpoints: ProviderEndpoints,
    provider: str,
    address: str,
    credentials: dict[str, Any],
    search_index: bool = True,
    database: str = "sqlite",
    schema_changes: tuple[str, ...] = (),
) -> dict[str, Any]:
    options = ProviderOptions(
        gmail_quota_units_per_minute=UNPACED, microsoft_folders=MICROSOFT_FOLDERS
    )
    outcome = harness.timed_full_sync(
        endpoints, provider, address, credentials, options, search_index, database, schema_changes
    )
    assert outcome["failed"] is None, outcome["failed"]
    return outcome


def _raw_gmail(endpoints: ProviderEndpoints, address: str, credentials: dict[str, Any]) -> int:
    from mailsync.providers.gmail import METADATA_HEADERS, GmailProvider

    # The provider only builds the authorised client here; the loop is the library's own API.
    provider = GmailProvider(address, credentials, endpoints, quota_units_per_minute=UNPACED)
    service, messages = provider._service, provider._users.messages()
    fetched, token = 0, None
    parts: list[Any] = []
    keep = parts.append  # bound once: the batch callbacks all feed the same list
    while True:
        listing = messages.list(
            userId="me", maxResults=500, pageToken=token, includeSpamTrash=True
        ).execute()
        ids = [m["id"] for m in listing.get("messages", [])]
        for start in range(0, len(ids), 50):
            batch = service.new_batch_http_request(callback=lambda _i, r, _e: keep(r))
            for mid in ids[start : start + 50]:
                batch.add(
                    messages.get(
                        userId="me", id=mid, format="metadata", metadataHeaders=METADATA_HEADERS
                    )
                )
            batch.execute()
        fetched += sum(1 for part in parts if part)
        parts.clear()
        token = listing.get("nextPageToken")
        if not token:
            provider.close()
            return fetched


def _raw_microsoft(endpoints: ProviderEndpoints, address: str, credentials: dict[str, Any]) -> int:
    from mailsync.providers.microsoft import MicrosoftProvider

    provider = MicrosoftProvider(address, credentials, endpoints, folders=MICROSOFT_FOLDERS)
    headers = {"Authorization": f"Bearer {provider._access_token()}"}
    fetched = 0
    with httpx.Client(
        verify=provider._ssl_context(endpoints.ca_bundle),
        trust_env=False,
        timeout=30,
        headers={"Prefer": "odata.maxpagesize=100"},
    ) as client:
        for folder in MICROSOFT_FOLDERS:
            link: str | None = f"{endpoints.graph_api_url}{provider._initial_link(folder)}"
            while link:
                body = client.get(link, headers=headers).raise_for_status().json()
                fetched += len(body.get("value", []))
                link = body.get("@odata.nextLink")
    provider.close()
    return fetched


def _raw(
    endpoints: ProviderEndpoints, provider: str, address: str, credentials: dict[str, Any]
) -> dict[str, Any]:
    fetch = _raw_gmail if provider == "gmail" else _raw_microsoft
    baseline = harness.current_rss_mb()
    started = time.perf_counter()
    count = fetch(endpoints, address, credentials)
    return {
        "messages": count,
        "seconds": time.perf_counter() - started,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": harness.peak_rss_mb(),
    }


def run(size: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as workdir,
        harness.running_fakes(Path(workdir)) as fakes,
        GmailAdmin(fakes.gmail_url, fakes.ca_path, timeout=600) as gmail,
        MicrosoftAdmin(fakes.microsoft_url, fakes.ca_path, timeout=600) as microsoft,
    ):
        endpoints = harness.endpoints(fakes)
        admins: dict[str, GmailAdmin | MicrosoftAdmin] = {"gmail": gmail, "microsoft": microsoft}
        for count in SIZES[size]:
            for provider, admin in admins.items():
                address = f"bench-{count}@{provider}.example"
                credentials = admin.create_mailbox(address, count).provider_credentials()
                # Rounds of every variant one after another, medians taken: the machine's
                # pace drifts over minutes, and each variant sees the same drift.
                variants: dict[str, tuple[Any, ...]] = {
                    "raw": (_raw,),
                    "ours": (_pipeline,),
                    "bare": (_pipeline, False),  # no search index
                    "postgres": (_pipeline, True, "postgresql"),
                    "postgres bare": (_pipeline, False, "postgresql"),
                }
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
                for _ in range(ROUNDS[size]):
                    for name, (fn, *extra) in variants.items():
                        runs[name].append(
                            harness.in_fresh_process(
                                fn, endpoints, provider, address, credentials, *extra
                            )
                        )
                raw, ours, bare, postgres, postgres_bare = (
                    harness.median_run(runs[name]) for name in variants
                )
                assert {run["messages"] for group in runs.values() for run in group} == {count}
                raw_rate = count / raw["seconds"]
                our_rate = count / ours["seconds"]
                bare_rate = count / bare["seconds"]
                postgres_rate = count / postgres["seconds"]
                postgres_bare_rate = count / postgres_bare["seconds"]
                rows.append(
                    {
                        "provider": provider,
                        "messages": count,
                        "rounds": ROUNDS[size],
                        "raw msg/s": raw_rate,
                        "pipeline msg/s": our_rate,
                        "pipeline/raw": our_rate / raw_rate,
                        "pipeline msg/s, no search index": bare_rate,
                        "search index kept": our_rate / bare_rate,
                        "pipeline msg/s, PostgreSQL": postgres_rate,
                        "PostgreSQL/SQLite": postgres_rate / our_rate,
                        "PostgreSQL msg/s, no search index": postgres_bare_rate,
                        "PostgreSQL search index kept": postgres_rate / postgres_bare_rate,
                        "raw peak RSS MB": raw["peak_rss_mb"],
                        "pipeline peak RSS MB": ours["peak_rss_mb"],
                        "pipeline RSS growth MB": ours["peak_rss_mb"] - ours["baseline_rss_mb"],
                    }
                )
                harness.console.log(f"{provider} {count:,}: {rows[-1]['pipeline/raw']:.2f} of raw")
    return rows
