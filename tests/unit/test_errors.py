"""The error hierarchy and its tables (mailsync/errors.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mailsync import errors

ROOT = Path(__file__).resolve().parents[2]
# Exception classes that are not errors of mailsync's own: the API's answer to any error, and
# a timeout the Prefect client must take for its own transport error (so it retries it).
NOT_OURS = {
    "mailsync/api/errors.py:ApiError",
    "mailsync/orchestration/deadline.py:PrefectCallTimeout",
}


def test_every_code_has_a_status_or_is_declared_job_only() -> None:
    """Each error class's code maps to an HTTP status, or is declared as one no API answer
    carries: a new error class cannot reach the API as an unplanned 500."""
    for cls in errors.error_classes():
        assert cls.code in errors.HTTP_STATUS or cls.code in errors.NOT_ANSWERED, cls


def test_the_tables_name_only_codes_some_error_or_the_api_uses() -> None:
    """No dead rows: every job-only code belongs to an error class."""
    codes = {cls.code for cls in errors.error_classes()}
    assert codes >= errors.NOT_ANSWERED
    assert not errors.NOT_ANSWERED & errors.HTTP_STATUS.keys()


def test_the_docstring_draws_every_class() -> None:
    """The hierarchy drawn in the module docstring names every class, so it stays the map."""
    doc = errors.__doc__ or ""
    missing = [cls.__name__ for cls in errors.error_classes() if cls.__name__ not in doc]
    assert not missing


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.MailboxBusyError("busy"), "sync_in_progress"),
        (errors.SyncInProgressError("busy", job_id="sync_1"), "sync_in_progress"),
        (errors.PrefectUnavailableError("down"), "service_unavailable"),
        (errors.TransientProviderError("503", retry_after=2.0), "provider_unavailable"),
        (KeyError("token"), "internal_error"),
    ],
)
def test_job_error_code(exc: BaseException, code: str) -> None:
    """A job records our errors' own codes, and internal_error for anything else."""
    assert errors.job_error_code(exc) == code


def test_prefect_unavailable_hides_its_detail() -> None:
    """What Prefect said stays in the logs: callers read a generic retry hint."""
    exc = errors.PrefectUnavailableError("refused: http://10.0.0.3:4200/api token=abc")
    assert "10.0.0.3" not in exc.public_message


def test_exception_classes_are_defined_only_in_errors() -> None:
    """One error model: no module of the library defines its own exception class outside
    mailsync/errors.py (the fakes, which mimic the providers, and private control-flow
    signals, named with a leading underscore, aside)."""
    found = []
    for path in (ROOT / "mailsync").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "mailsync/errors.py" or rel.startswith("mailsync/fakes/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(b) for b in node.bases}
                if any(b.endswith(("Error", "Exception")) for b in bases):
                    found.append(f"{rel}:{node.name}")
    assert not set(found) - NOT_OURS


def test_every_code_a_job_can_end_with_is_documented() -> None:
    """JOB_ERRORS lists every code a job's error can carry: the codes of the errors a sync
    can raise, what reconciliation and the orchestrator record of a run, and internal_error;
    the README's table of job errors lists them all."""
    from mailsync.core.jobs import reconcile

    raised_in_a_sync = {
        cls.code
        for cls in errors.error_classes()
        if issubclass(
            cls,
            errors.ProviderError
            | errors.SyncInProgressError
            | errors.MailboxGoneError
            | errors.CredentialsUnreadableError
            | errors.PrefectUnavailableError,
        )
    }
    run_endings = {*reconcile.RUN_FAILURES.values(), "job_lost", "orchestrator_unavailable"}
    assert raised_in_a_sync | run_endings | {"internal_error"} == errors.JOB_ERRORS.keys()
    readme = (ROOT / "README.md").read_text()
    assert [c for c in errors.JOB_ERRORS if f"| `{c}` |" not in readme] == []


def test_the_tables_cover_mailsyncs_classes_only() -> None:
    """A subclass defined outside mailsync (a test's, a plugin's) is not one of the classes
    the tables must cover: defining one does not break the completeness tests."""

    class Outsider(errors.NotFoundError):
        pass

    assert Outsider not in errors.error_classes()
    assert errors.UnknownWorkspaceError in errors.error_classes()
