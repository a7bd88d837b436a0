"""What every benchmark shares: the fakes to measure against, fresh processes, result files."""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from mailsync import db
from mailsync.devstack.fakes import Fakes, fakes_in_threads
from mailsync.fakes.tls import ensure_tls
from mailsync.providers.base import ProviderEndpoints, ProviderOptions

RESULTS = Path(__file__).resolve().parent / "results"
# PostgreSQL without full text: the tsvector column dropped, and the week index with it.
NO_POSTGRES_FULL_TEXT = "ALTER TABLE message DROP COLUMN search"
console = Console(width=200)
# The machine's PostgreSQL (scripts/ensure-postgres starts it), as tests/conftest.py reaches it.
POSTGRES_ADMIN_URL = os.environ.get(
    "MAILSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def machine() -> dict[str, Any]:
    memory_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kib = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024**2, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; values need not be sorted."""
    if not values:
        raise ValueError("no values")
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return values[0] if q <= 0 else max(values) if q >= 100 else cuts[int(q) - 1]


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median duration (its memory figures with it)."""
    return sorted(runs, key=lambda r: float(r["seconds"]))[len(runs) // 2]


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mb() -> float:
    """This process's peak resident set size since it exec'd. (Not getrusage's ru_maxrss:
    that survives fork + exec, so a child spawned by a big parent inherits its peak.)"""
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def in_fresh_process(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `fn(*args)` in a newly spawned interpreter, so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, args)
    return result


@contextmanager
def app_database(kind: str, workdir: Path) -> Iterator[str]:
    """A new, migrated app database of `kind` (sqlite, postgresql), dropped afterwards."""
    if kind == "sqlite":
        url = f"sqlite:///{workdir / 'bench.db'}"
        db.upgrade(url)
        yield url
        db.dispose_engines()
        return
    name = f"mailsync_bench_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        url = f"{base}/{name}"
        db.upgrade(url)
        yield url
    finally:
        db.dispose_engines()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_fakes(
    workdir: Path, gmail: dict[str, Any] | None = None, microsoft: dict[str, Any] | None = None
) -> Iterator[Fakes]:
    """Fake Gmail and Microsoft over HTTPS in this process's threads (not the measured one)."""
    with fakes_in_threads(ensure_tls(workdir / "tls"), 0, gmail, microsoft) as fakes:
        yield fakes


def timed_full_sync(
    endpoints: ProviderEndpoints,
    provider: str,
    address: str,
    credentials: dict[str, Any],
    options: ProviderOptions,
    search_index: bool = True,
    database: str = "sqlite",
    schema_changes: Sequence[str] = (),
) -> dict[str, Any]:
    """A full sync as a job runs it (`core.sync.engine.sync_mailbox`) into a throwaway index
    (`database`: sqlite, or a new PostgreSQL database that no ANALYZE has seen): messages
    added, seconds, RSS just before and peak; a provider error that ends the sync is reported
    in `failed` instead of raised. Without `search_index`, the full-text index is not
    maintained, for the cost it adds: on SQLite its triggers are dropped and the FTS5 rows the
    index writes for new messages not written; on PostgreSQL the week index and the tsvector
    column it is made from are dropped. `schema_changes`: statements run on the migrated
    database before the sync (bench/fulltext.py's variants of the PostgreSQL index)."""
    from cryptography.fernet import Fernet

    from mailsync.core import workspaces
    from mailsync.core.sync.engine import sync_mailbox
    from mailsync.db.crypto import CredentialBox
    from mailsync.errors import ProviderError

    with tempfile.TemporaryDirectory() as workdir, app_database(database, Path(workdir)) as url:
        if not search_index and database == "postgresql":
            schema_changes = [*schema_changes, NO_POSTGRES_FULL_TEXT]
        elif not search_index:
            from mailsync.core.search import sqlite_rows

            with db.get_engine(url).begin() as connection:
                for trigger in ("insert", "delete", "update"):
                    connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS message_fts_{trigger}")
            # The index's own write of new messages' FTS5 rows (migration 0012), skipped in
            # this benchmark-only process.
            sqlite_rows.add = lambda _session, _rowids: None  # type: ignore[assignment]
        if schema_changes:
            with db.get_engine(url).begin() as connection:
                for statement in schema_changes:
                    connection.exec_driver_sql(statement)
        box = CredentialBox(Fernet.generate_key())
        with db.session_scope(url) as session:
            workspaces.create_workspace(session, "bench")
            mailbox, _ = workspaces.connect_mailbox(
                session, box, "bench", provider, address, credentials
            )
        baseline, started = current_rss_mb(), time.perf_counter()
        try:
            result = sync_mailbox(
                url, mailbox.id, "full", box=box, endpoints=endpoints, options=options
            )
            failed, count = None, result.counts.added
        except ProviderError as exc:
            failed, count = f"{exc.code}: {exc}", 0
        return {
            "messages": count,
            "seconds": time.perf_counter() - started,
            "failed": failed,
            "baseline_rss_mb": baseline,
            "peak_rss_mb": peak_rss_mb(),
        }


def endpoints(fakes: Fakes) -> ProviderEndpoints:
    return ProviderEndpoints(
        google_token_uri=f"{fakes.gmail_url}/token",
        gmail_api_url=f"{fakes.gmail_url}/",
        microsoft_authority_host=fakes.microsoft_url,
        graph_api_url=f"{fakes.microsoft_url}/v1.0",
        ca_bundle=str(fakes.ca_path),
    )


def save(name: str, size: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    """bench/results/<name>.json (a full run, the one BENCHMARKS.md reports; other sizes get
    <name>-<size>.json): the rows with the command, the machine and the date."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / (f"{name}.json" if size == "full" else f"{name}-{size}.json")
    document = {
        "benchmark": name,
        "size": size,
        "command": "python -m bench " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "rows": rows,
        **extra,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def show(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(_cell(value) for value in row.values()))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
