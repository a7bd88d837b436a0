"""Registers prefect.yaml's work pool and deployments from local code, offline."""

from __future__ import annotations

import contextlib
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

from deployments.automations import ensure_zombie_automation
from mailsync.settings import Settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


def load_declaration(path: Path = PREFECT_YAML) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def _pull_steps(project_dir: Path) -> list[dict[str, Any]]:
    return [
        {
            "prefect.deployments.steps.set_working_directory": {
                "directory": str(project_dir),
            }
        }
    ]


def ensure_work_pool(client: SyncPrefectClient, name: str, type: str = "process") -> None:
    try:
        client.read_work_pool(name)
    except ObjectNotFound:
        with contextlib.suppress(ObjectAlreadyExists):  # another process won the race
            client.create_work_pool(WorkPoolCreate(name=name, type=type))


def pool_type(declaration: dict[str, Any], name: str) -> str:
    """The type prefect.yaml's `work_pools` declares for a pool (process when undeclared)."""
    for pool in declaration.get("work_pools") or []:
        if pool.get("name") == name:
            return str(pool.get("type") or "process")
    return "process"


def schedules_of(spec: dict[str, Any], activate: bool = True) -> list[DeploymentScheduleCreate]:
    """A deployment's `schedules` as `prefect deploy` reads them (interval or cron). With
    activate=False every schedule is registered inactive (declared, but creating no runs)."""
    result = []
    for item in spec.get("schedules") or []:
        schedule: IntervalSchedule | CronSchedule
        if "interval" in item:
            anchor = item.get("anchor_date")
            schedule = IntervalSchedule(
                interval=timedelta(seconds=float(item["interval"])),
                anchor_date=datetime.fromisoformat(anchor) if anchor else None,
                timezone=item.get("timezone"),
            )
        elif "cron" in item:
            schedule = CronSchedule(cron=item["cron"], timezone=item.get("timezone"))
        else:
            raise ValueError(f"unsupported schedule in prefect.yaml: {item}")
        result.append(
            DeploymentScheduleCreate(
                schedule=schedule,
                active=bool(item.get("active", True)) and activate,
                parameters=item.get("parameters") or {},
                slug=item.get("slug"),
            )
        )
    return result


def concurrency_of(spec: dict[str, Any]) -> tuple[int | None, ConcurrencyOptions | None]:
    """A deployment's `concurrency_limit`: an int, or {limit, collision_strategy}."""
    declared = spec.get("concurrency_limit")
    if declared is None or isinstance(declared, int):
        return declared, None
    strategy = ConcurrencyLimitStrategy(declared.get("collision_strategy") or "ENQUEUE")
    return declared["limit"], ConcurrencyOptions(collision_strategy=strategy)


def register(
    api_url: str,
    project_dir: Path = PROJECT_DIR,
    work_pool: str | None = None,
    *,
    activate_schedules: bool = True,
    auth_string: str | None = None,
) -> dict[str, str]:
    """Create or update every deployment of prefect.yaml, and the automation that crashes
    runs whose heartbeats stopped (automations.py); returns {"flow/name": id}.

    Schedules are active, as `prefect deploy` makes them; test and benchmark stacks pass
    `activate_schedules=False` so that no refresh runs behind their backs. `auth_string`: the
    Prefect API's (default: MAILSYNC_PREFECT_AUTH_STRING, else PREFECT_API_AUTH_STRING).
    """
    declaration = load_declaration(project_dir / "prefect.yaml")
    registered: dict[str, str] = {}
    auth_string = auth_string or Settings().prefect_client_auth_string()
    with SyncPrefectClient(api_url, auth_string=auth_string) as client:
        for spec in declaration["deployments"]:
            pool = work_pool or spec["work_pool"]["name"]
            ensure_work_pool(client, pool, pool_type(declaration, spec["work_pool"]["name"]))
            limit, options = concurrency_of(spec)
            flow: Flow[..., Any] = load_flow_from_entrypoint(str(project_dir / spec["entrypoint"]))
            flow_id = client.create_flow_from_name(flow.name)
            deployment_id = client.create_deployment(
                flow_id=flow_id,
                name=spec["name"],
                entrypoint=spec["entrypoint"],
                description=spec.get("description"),
                tags=spec.get("tags") or [],
                parameters=spec.get("parameters") or {},
                parameter_openapi_schema=parameter_schema(flow).model_dump(exclude_unset=True),
                work_pool_name=pool,
                work_queue_name=spec["work_pool"].get("work_queue_name") or "default",
                job_variables=spec["work_pool"].get("job_variables") or {},
                path=str(project_dir),
                pull_steps=_pull_steps(project_dir),
                enforce_parameter_schema=True,
                schedules=schedules_of(spec, activate_schedules),
                concurrency_limit=limit,
                concurrency_options=options,
            )
            registered[f"{flow.name}/{spec['name']}"] = str(deployment_id)
        ensure_zombie_automation(client)
    return registered


def main() -> None:
    api_url = os.environ.get("PREFECT_API_URL")
    if not api_url:
        raise SystemExit("set PREFECT_API_URL to the Prefect API to register against")
    for name, deployment_id in register(api_url).items():
        print(f"registered {name} ({deployment_id})")


if __name__ == "__main__":
    main()
