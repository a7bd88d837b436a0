"""`python -m bench`: runs one benchmark (or all), prints its table, writes bench/results/."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any

import typer

from bench import harness

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


class Size(StrEnum):
    tiny = "tiny"  # a smoke run: proves the benchmark works, measures nothing
    small = "small"
    full = "full"  # what BENCHMARKS.md reports


SizeOption = typer.Option(Size.full, "--size", help="tiny (smoke), small or full")
WorkerTypesOption = typer.Option(
    "warm,process", "--worker-type", help="comma-separated: warm (mailsync-warm), process (stock)"
)


def _names(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = sorted(set(names) - set(allowed))
    if unknown or not names:
        raise typer.BadParameter(f"{option}: one or more of {', '.join(allowed)}")
    return names


def _run(name: str, title: str, size: Size, measure: Callable[[str], list[dict[str, Any]]]) -> None:
    rows = measure(size.value)
    harness.show(title, rows)
    harness.console.print(f"wrote {harness.save(name, size.value, rows)}")


@app.command()
def throughput(size: Size = SizeOption) -> None:
    """Full-sync messages/s and peak RSS, pipeline beside the raw client libraries."""
    from bench import throughput as bench

    _run("throughput", "full-sync throughput", size, bench.run)


@app.command()
def fulltext(size: Size = SizeOption) -> None:
    """A Microsoft full sync into PostgreSQL without full text, with the tsvector only, with
    a plain GIN index of it and as migrated (the week index): what each piece costs."""
    from bench import fulltext as bench

    _run("fulltext", "PostgreSQL full text in a full sync", size, bench.run)


@app.command()
def quota(size: Size = SizeOption) -> None:
    """A paced Gmail full sync against a fake enforcing the per-user quota (time-scaled)."""
    from bench import quota as bench

    _run("quota", "Gmail quota use", size, bench.run)


@app.command()
def trigger(size: Size = SizeOption) -> None:
    """POST /v1/email/sync p50/p99 and req/s at concurrency 1, 16, 64, beside a bare insert."""
    from bench import trigger as bench

    _run("trigger", "trigger latency", size, bench.run)


@app.command()
def e2e(
    size: Size = SizeOption,
    worker_type: str = WorkerTypesOption,
    prefect_db: str = typer.Option(
        "sqlite", "--prefect-db", help="comma-separated: sqlite (default stack), postgresql"
    ),
) -> None:
    """API trigger -> completed of incremental syncs (100 new Gmail messages; 10 in each of a
    Gmail and a Microsoft mailbox), p50/p95 per worker type, and warm / stock ratios."""
    from bench import e2e as bench

    types = _names(worker_type, ("warm", "process"), "--worker-type")
    dbs = _names(prefect_db, ("sqlite", "postgresql"), "--prefect-db")
    rows, timelines = bench.run(size.value, types, dbs)
    harness.show("incremental sync, trigger -> completed", rows)
    ratios, targets = bench.ratios(rows), bench.targets(rows)
    harness.show("warm / stock (same run)", ratios)
    harness.show("targets", targets)
    # A partial run (one database, one worker type) must not overwrite the default one.
    name = "-".join(
        ["e2e", *(dbs if dbs != ["sqlite"] else []), *(types if len(types) == 1 else [])]
    )
    path = harness.save(name, size.value, rows, ratios=ratios, targets=targets, timelines=timelines)
    harness.console.print(f"wrote {path}")


@app.command()
def memory(size: Size = SizeOption, worker_type: str = WorkerTypesOption) -> None:
    """Private memory (USS) of each flow-run process, N syncs held at once per worker type."""
    from bench import memory as bench

    rows = bench.run(size.value, _names(worker_type, ("warm", "process"), "--worker-type"))
    harness.show("flow-run processes", rows)
    summary = bench.summary(rows)
    harness.show("per worker type and process", summary)
    harness.console.print(f"wrote {harness.save('memory', size.value, rows, summary=summary)}")


@app.command()
def fanout(size: Size = SizeOption) -> None:
    """One scheduled refresh round over 1,000 connected mailboxes with no changes."""
    from bench import fanout as bench

    _run("fanout", "scheduled refresh round", size, bench.run)


@app.command()
def webhooks(size: Size = SizeOption) -> None:
    """A job's end -> its email.sync.completed at a receiver, from the job's own run and from
    a delivery run."""
    from bench import webhooks as bench

    _run("webhooks", "webhook latency", size, bench.run)


@app.command()
def search(
    size: Size = SizeOption,
    database: str = typer.Option(
        "sqlite,postgresql", "--database", help="comma-separated: sqlite, postgresql"
    ),
) -> None:
    """GET /v1/email/messages' queries over one workspace's index (1M messages at full size):
    p50/p99 per query shape, a 100-page cursor walk, and the index's size on disk."""
    from bench import search as bench

    kinds = _names(database, ("sqlite", "postgresql"), "--database")
    rows, walks, sizes = bench.run(size.value, kinds)
    harness.show("search latency", rows)
    harness.show("cursor walks: first and last page (best of 3)", walks)
    harness.show("index size", sizes)
    name = "-".join(["search", *(kinds if len(kinds) == 1 else [])])
    harness.console.print(f"wrote {harness.save(name, size.value, rows, walks=walks, sizes=sizes)}")


@app.command()
def freshness(size: Size = SizeOption) -> None:
    """A message added at the fake -> readable through the API, with push (Gmail, Microsoft)
    and with polling at the default interval; a burst of 1,000 notifications for 10 mailboxes."""
    from bench import freshness as bench

    rows, burst = bench.run(size.value)
    harness.show("freshness: added at the provider -> readable", rows)
    harness.show("burst of notifications", [{k: str(v) for k, v in burst.items()}])
    harness.console.print(f"wrote {harness.save('freshness', size.value, rows, burst=burst)}")


if __name__ == "__main__":
    app()
