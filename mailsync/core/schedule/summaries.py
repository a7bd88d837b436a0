"""Run summaries: the markdown artifacts sync and refresh runs leave in the Prefect UI."""

from __future__ import annotations

from mailsync.core.jobs.contract import JobEnd, JobRef


def artifact_key(prefix: str, identifier: str) -> str:
    """Prefect artifact keys hold only lowercase letters, digits and dashes."""
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in identifier.lower())
    return f"{prefix}-{cleaned}"


def _short(cursor: str | None, keep: int = 24) -> str:
    if not cursor:
        return "-"
    return f"`{cursor[:keep]}…`" if len(cursor) > keep else f"`{cursor}`"


def summary_markdown(job: JobRef, end: JobEnd, duration_s: float) -> str:
    """The end-of-run summary of one job: counts, duration, cursors and resets per mailbox."""
    job_id, mode, error = job.job_id, job.mode, end.error
    status = f"failed: `{error.code}` {error.message}" if error else "completed"
    lines = [
        f"# Sync {job_id}",
        "",
        f"**{status}** · mode {mode} · {duration_s:.1f} s",
        "",
        "| mailbox | performed | reason | cursor_reset | added | updated | deleted "
        "| cursor before | cursor after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in end.results:
        lines.append(
            f"| {r.provider} {r.address} | {r.performed_mode} | {r.reason or '-'} "
            f"| {'yes' if r.reason == 'cursor_reset' else 'no'} "
            f"| {r.counts.added} | {r.counts.updated} | {r.counts.deleted} "
            f"| {_short(r.cursor_before)} | {_short(r.cursor_after)} |"
        )
    return "\n".join(lines) + "\n"
