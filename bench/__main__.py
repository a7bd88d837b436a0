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
def e2e(size: Size = SizeOption) -> None:
    """API trigger -> completed for an incremental sync of 100 new messages, p50/p95."""
    from bench import e2e as bench

    _run("e2e", "incremental sync, trigger -> completed", size, bench.run)


@app.command()
def fanout(size: Size = SizeOption) -> None:
    """One scheduled refresh round over 1,000 connected mailboxes with no changes."""
    from bench import fanout as bench

    _run("fanout", "scheduled refresh round", size, bench.run)


if __name__ == "__main__":
    app()
