"""What PostgreSQL's full text costs a full sync, piece by piece, in one run.

The same Microsoft full sync (the fastest pipeline, where the database's share shows most)
into a new PostgreSQL database, four ways: without full text (the tsvector column dropped,
as `bench throughput`'s "no search index"); with the tsvector column only (migration 0007's
generated column, no index on it); with 0007's plain GIN index of the words instead of the
week index (the least the issue's "tsvector with a GIN index" can be); and as migrated (the
tsvector and 0014's week index). Each variant runs in rounds one after another and each
figure is the median; the ratios are to the run without full text of the same run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import harness, throughput
from mailsync.db.migrations import revisions
from mailsync.fakes.client import MicrosoftAdmin

SIZES = {"tiny": 300, "small": 10_000, "full": 100_000}
ROUNDS = {"tiny": 1, "small": 3, "full": 3}
_DROP_WEEK_INDEX = f"DROP INDEX {revisions.load('0014_fulltext_by_week.py').INDEX}"
_PLAIN_GIN = revisions.load("0007_message_search.py")._POSTGRES[-1]  # 0007's CREATE INDEX
VARIANTS: dict[str, tuple[str, ...]] = {
    "no full text": (harness.NO_POSTGRES_FULL_TEXT,),
    "tsvector column only": (_DROP_WEEK_INDEX,),
    "tsvector + plain GIN (0007)": (_DROP_WEEK_INDEX, _PLAIN_GIN),
    "tsvector + week index (as migrated)": (),
}


def run(size: str) -> list[dict[str, Any]]:
    count = SIZES[size]
    with (
        tempfile.TemporaryDirectory() as workdir,
        harness.running_fakes(Path(workdir)) as fakes,
        MicrosoftAdmin(fakes.microsoft_url, fakes.ca_path, timeout=600) as microsoft,
    ):
        endpoints = harness.endpoints(fakes)
        address = f"fulltext-{count}@microsoft.example"
        credentials = microsoft.create_mailbox(address, count).provider_credentials()
        # The fake draws each message on its first read: a raw read first, so that every
        # measured run reads a warm fake.
        harness.in_fresh_process(throughput._raw, endpoints, "microsoft", address, credentials)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
        for _ in range(ROUNDS[size]):
            for name, statements in VARIANTS.items():
                runs[name].append(
                    harness.in_fresh_process(
                        throughput._pipeline,
                        endpoints,
                        "microsoft",
                        address,
                        credentials,
                        True,
                        "postgresql",
                        statements,
                    )
                )
        assert {r["messages"] for group in runs.values() for r in group} == {count}
        rates = {name: count / harness.median_run(group)["seconds"] for name, group in runs.items()}
        base = rates["no full text"]
        return [
            {
                "variant": name,
                "messages": count,
                "rounds": ROUNDS[size],
                "msg/s": rate,
                "of no full text": rate / base,
                "us a message more": (1 / rate - 1 / base) * 1e6,
            }
            for name, rate in rates.items()
        ]
