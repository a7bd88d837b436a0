"""An attempt that breaks before anything is sent (DNS, SSRF refusal, a bug preparing the
request, a secret that cannot be decrypted) is an attempt like any other: logged, retried on
the schedule, failed at the horizon; never pending for ever nor retried for ever."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from mailsync.db import get_engine, session_scope
from mailsync.db.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint, as_utc, utcnow
from mailsync.settings import Settings
from mailsync.webhooks import dispatch, outbox, ssrf
from tests.support.receiver import (
    attempts_of,
    finish_job,
    new_endpoint,
    new_workspace,
    pending_delivery,
    running_job,
    slow_receiver,
    webhook_settings,
)

HOOK = "https://hooks.example.com/in"


class Clock:
    """The wall clock as the retry schedule reads it, moved by the test only."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


def _resolver_bug(host: str, port: int) -> list[str]:
    raise RuntimeError("a bug in preparing the request")


def _dns_failure(host: str, port: int) -> list[str]:
    raise OSError("[Errno -2] Name or service not known")


def _garbage(host: str, port: int) -> list[str]:
    return ["not-an-address"]


def _private(host: str, port: int) -> list[str]:
    return ["10.0.0.7"]


def _public(host: str, port: int) -> list[str]:
    return ["93.184.215.14"]


BREAKAGES: dict[str, tuple[ssrf.Resolver, str]] = {
    "a bug raising while preparing": (_resolver_bug, "RuntimeError"),
    "a resolver answering garbage": (_garbage, "ValueError"),
    "DNS failure": (_dns_failure, "could not be resolved"),
    "SSRF refusal at send time": (_private, "private"),
}


@pytest.fixture
def settings(unshared_database_url: str, tmp_path: Path) -> Settings:
    """A schedule of minutes over a 10-minute horizon: 0, 60, 180, 300, 420, 540 s, failed."""
    return webhook_settings(
        unshared_database_url,
        tmp_path,
        webhook_retry_base_seconds=60,
        webhook_retry_max_seconds=120,
        webhook_retry_horizon_seconds=600,
    )


def _due_delivery(settings: Settings) -> tuple[str, str]:
    """A fresh pending delivery of a finished job, and its endpoint's signing secret."""
    url = settings.resolved_database_url
    workspace = new_workspace(url)
    endpoint, secret = new_endpoint(settings, workspace, HOOK)
    finish_job(url, running_job(url, workspace))
    with Session(get_engine(url)) as session:
        row = session.exec(
            select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
        ).one()
    return row.id, secret


def _expected_attempts(settings: Settings) -> int:
    """How many attempts the schedule allows a delivery that always fails (a receiver
    answering 500), reckoned from the policy alone."""
    policy, elapsed, attempts = outbox.RetryPolicy.from_settings(settings), 0.0, 1
    while elapsed + policy.delay(attempts).total_seconds() <= policy.horizon_seconds:
        elapsed += policy.delay(attempts).total_seconds()
        attempts += 1
    return attempts


def _run_schedule(
    settings: Settings, delivery_id: str, attempt: Callable[[Clock], object]
) -> WebhookDelivery:
    """Make every attempt the schedule asks for, moving the clock to each retry time."""
    clock = Clock()
    for _ in range(100):  # far more than any schedule here allows: a bound, not a figure
        attempt(clock)
        with Session(get_engine(settings.resolved_database_url)) as session:
            row = session.get(WebhookDelivery, delivery_id)
            assert row is not None
        if row.status != "pending":
            return row
        assert row.next_attempt_at is not None, "a pending delivery must have a next attempt"
        clock.now = as_utc(row.next_attempt_at) or clock.now
    raise AssertionError(f"still {row.status} after 100 attempts: retried for ever")


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_an_attempt_that_breaks_before_sending_is_retried_then_failed_at_the_horizon(
    settings: Settings, breakage: str
) -> None:
    """Whatever breaks before the request leaves, each attempt is logged (no status code, a
    short error naming what broke, never the secret), the next one is scheduled by the same
    backoff, and the delivery ends `failed` after as many attempts as a receiver answering
    500 would get."""
    resolver, expected_error = BREAKAGES[breakage]
    delivery_id, secret = _due_delivery(settings)
    row = _run_schedule(
        settings,
        delivery_id,
        lambda clock: dispatch.deliver_one(delivery_id, settings, resolver=resolver, clock=clock),
    )
    assert row.status == "failed" and row.next_attempt_at is None
    assert row.attempts == _expected_attempts(settings) == 6
    with Session(get_engine(settings.resolved_database_url)) as session:
        logged = session.exec(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)
        ).all()
    assert len(logged) == row.attempts
    assert all(a.status_code is None and a.error for a in logged)
    assert all(expected_error in (a.error or "") for a in logged), logged[0].error
    assert not any(secret in (a.error or "") for a in logged)


def test_an_undecryptable_secret_is_a_logged_attempt_that_fails_at_the_horizon(
    settings: Settings,
) -> None:
    """A stored secret that no configured key decrypts (a key rotated away) breaks the
    request's preparation: the attempt is logged and retried like any failure, so the
    delivery ends `failed` instead of being re-claimed every claim period for ever."""
    delivery_id, _ = _due_delivery(settings)
    with session_scope(settings.resolved_database_url) as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        endpoint = session.get(WebhookEndpoint, row.endpoint_id)
        assert endpoint is not None
        endpoint.secret_encrypted = "gAAAAA-not-a-token"
        session.add(endpoint)
    final = _run_schedule(
        settings,
        delivery_id,
        lambda clock: dispatch.deliver_one(delivery_id, settings, resolver=_public, clock=clock),
    )
    assert (final.status, final.attempts) == ("failed", _expected_attempts(settings))


def test_a_clock_past_the_horizon_fails_the_next_failure_at_once(settings: Settings) -> None:
    """The first failure of a delivery first due longer ago than the horizon ends it: the
    horizon counts from the event, not from the first attempt."""
    delivery_id, _ = _due_delivery(settings)
    clock = Clock()
    clock.now += timedelta(seconds=settings.webhook_retry_horizon_seconds + 1)
    dispatch.deliver_one(delivery_id, settings, resolver=_resolver_bug, clock=clock)
    with Session(get_engine(settings.resolved_database_url)) as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None and (row.status, row.attempts) == ("failed", 1)


def test_a_tls_failure_is_a_logged_attempt_that_fails_at_the_horizon(settings: Settings) -> None:
    """A receiver whose TLS handshake fails (here: it answers the ClientHello in plain HTTP)
    gets a logged attempt per retry and the delivery ends `failed` at the horizon."""
    url = settings.resolved_database_url
    with slow_receiver(drip_every=None) as plain:
        workspace = new_workspace(url)
        endpoint, _ = new_endpoint(settings, workspace, plain.url.replace("http://", "https://"))
        finish_job(url, running_job(url, workspace))
        delivery_id = pending_delivery(settings, endpoint.id).id
        final = _run_schedule(
            settings,
            delivery_id,
            lambda clock: dispatch.deliver_one(delivery_id, settings, clock=clock),
        )
    assert (final.status, final.attempts) == ("failed", _expected_attempts(settings))
    logged = attempts_of(settings, endpoint.id)
    assert len(logged) == final.attempts and all("ConnectError" in (a.error or "") for a in logged)
