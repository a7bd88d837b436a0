"""prefect.yaml is the one declaration: deployments/register.py and `prefect deploy --all`
register exactly what it declares, offline, from this checkout."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from deployments import automations
from deployments.register import (
    PROJECT_DIR,
    concurrency_of,
    load_declaration,
    pool_type,
    register,
    schedules_of,
)
from mailsync.orchestration import pruning
from mailsync.settings import Settings
from tests.support.bare_prefect import BareServer

DECLARATION = load_declaration()


def _by_name(name: str) -> dict[str, Any]:
    return next(d for d in DECLARATION["deployments"] if d["name"] == name)


def test_declaration_declares_the_scheduled_deployments() -> None:
    """The YAML declares the sync, refresh (every MAILSYNC_REFRESH_INTERVAL_SECONDS, one
    round at a time) and nightly full-sync deployments on one process pool, and register's
    reading of schedules and concurrency matches what the YAML says."""
    names = {d["name"] for d in DECLARATION["deployments"]}
    assert {"sync", "refresh", "nightly-full-sync"} <= names
    assert {d["work_pool"]["name"] for d in DECLARATION["deployments"]} == {"mailsync"}
    assert pool_type(DECLARATION, "mailsync") == "process"

    [refresh] = schedules_of(_by_name("refresh"))
    assert isinstance(refresh.schedule, IntervalSchedule) and refresh.active
    assert refresh.schedule.interval == timedelta(seconds=Settings().refresh_interval_seconds)
    assert concurrency_of(_by_name("refresh"))[0] == 1
    options = concurrency_of(_by_name("refresh"))[1]
    assert options is not None and options.collision_strategy.value == "CANCEL_NEW"

    [nightly] = schedules_of(_by_name("nightly-full-sync"))
    assert isinstance(nightly.schedule, CronSchedule)
    assert (nightly.schedule.cron, nightly.schedule.timezone) == ("0 3 * * *", "UTC")
    assert schedules_of(_by_name("sync")) == []
    assert [s.active for s in schedules_of(_by_name("refresh"), activate=False)] == [False]


def test_the_prune_deployment_is_daily_one_at_a_time_and_every_deployment_is_tagged() -> None:
    """`prune` runs daily (one round at a time: a round due while one runs is cancelled),
    and every deployment carries the `mailsync` tag the pruner selects runs by, so each
    deployment's old runs are pruned and no other project's are."""
    [daily] = schedules_of(_by_name("prune"))
    assert isinstance(daily.schedule, CronSchedule) and daily.active
    assert (daily.schedule.cron, daily.schedule.timezone) == ("30 4 * * *", "UTC")
    limit, options = concurrency_of(_by_name("prune"))
    assert limit == 1 and options is not None
    assert options.collision_strategy.value == "CANCEL_NEW"
    assert _by_name("prune")["entrypoint"] == "flows/prune.py:prune"
    assert all(pruning.MAILSYNC_TAG in d["tags"] for d in DECLARATION["deployments"])


def _snapshot(server: BareServer) -> dict[str, dict[str, Any]]:
    """What matters of every deployment on the server, keyed "flow/deployment"."""
    with server.client() as client:
        result = {}
        for d in client.read_deployments():
            flow = client.read_flow(d.flow_id)
            schedules = sorted(
                (
                    s.slug,
                    s.active,
                    s.schedule.model_dump(mode="json"),
                    s.parameters,
                )
                for s in d.schedules
            )
            result[f"{flow.name}/{d.name}"] = {
                "entrypoint": d.entrypoint,
                "description": d.description,
                "tags": sorted(d.tags),
                "parameters": d.parameters,
                "parameter_schema": d.parameter_openapi_schema,
                "enforce_parameter_schema": d.enforce_parameter_schema,
                "work_pool": d.work_pool_name,
                "work_queue": d.work_queue_name,
                "job_variables": d.job_variables,
                "pull_steps": d.pull_steps,
                "concurrency_limit": d.global_concurrency_limit.limit
                if d.global_concurrency_limit
                else None,
                "collision_strategy": d.concurrency_options.collision_strategy.value
                if d.concurrency_options
                else None,
                "schedules": schedules,
            }
        return result


@pytest.mark.integration
def test_prefect_deploy_and_register_create_the_same_deployments(
    bare_prefect: BareServer,
) -> None:
    """The documented `prefect deploy --all --no-prompt` succeeds offline (no image, no git,
    every outside address unreachable through a dead proxy) and creates exactly the
    deployments register() creates, field by field, which are exactly those prefect.yaml
    declares: names, entrypoints, parameters, schedules, concurrency, pool and queue."""
    api = bare_prefect.api_url
    with bare_prefect.client() as client:
        from prefect.client.schemas.actions import WorkPoolCreate

        client.create_work_pool(WorkPoolCreate(name="mailsync", type="process"))
    env = {
        **bare_prefect.env,
        "MAILSYNC_PROJECT_DIR": str(PROJECT_DIR),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    started = time.monotonic()
    deploy = subprocess.run(
        [sys.executable, "-m", "prefect", "deploy", "--all", "--no-prompt"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    print(f"prefect deploy --all: {time.monotonic() - started:.1f} s")
    by_cli = _snapshot(bare_prefect)

    registered = register(api, auth_string=bare_prefect.auth_string)
    by_code = _snapshot(bare_prefect)
    assert set(registered) == set(by_cli) == set(by_code)
    differing = {
        name: {k: (by_cli[name][k], v) for k, v in got.items() if by_cli[name][k] != v}
        for name, got in by_code.items()
        if by_cli[name] != got
    }
    assert differing == {}

    declared = {d["name"]: d for d in DECLARATION["deployments"]}
    assert {n.split("/", 1)[1] for n in by_code} == set(declared)
    for name, got in by_code.items():
        spec = declared[name.split("/", 1)[1]]
        assert got["entrypoint"] == spec["entrypoint"]
        assert got["parameters"] == (spec.get("parameters") or {})
        assert got["work_pool"] == spec["work_pool"]["name"]
        assert got["work_queue"] == spec["work_pool"]["work_queue_name"]
        assert got["concurrency_limit"] == concurrency_of(spec)[0]
        want = sorted(
            (s.slug, s.active, s.schedule.model_dump(mode="json"), s.parameters)
            for s in schedules_of(spec)
        )
        assert got["schedules"] == want
        assert got["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_DIR)}}
        ]

    # Registering again (every `mailsync up` does) changes nothing; test stacks register
    # their schedules inactive.
    register(api, auth_string=bare_prefect.auth_string)
    assert _snapshot(bare_prefect) == by_code
    register(api, activate_schedules=False, auth_string=bare_prefect.auth_string)
    inactive = _snapshot(bare_prefect)
    assert all(not s[1] for d in inactive.values() for s in d["schedules"])

    # One zombie-run automation however often register() runs, and every deployment's runs
    # beat more often than it waits (otherwise it would crash healthy runs).
    with bare_prefect.client() as client:
        (automation,) = client.read_automations_by_name(automations.NAME)
    assert automation.enabled and automation.trigger.posture == "Proactive"
    window = automation.trigger.within.total_seconds()
    for got in by_code.values():
        beat = int(got["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"])
        assert beat >= 30 and 2 * beat < window
