"""`prefect worker start --type mailsync-warm`: a process worker forking runs from a warm parent.

The stock process worker starts `python -m prefect.runner._workspace_supervisor`, which runs the
pull steps and execs `python -m prefect.engine`: every run imports Prefect and our flows from
scratch (~5 s of a trivial run's ~7 s). This worker serves the same `process` work pools with the
same job template, but starts each run it can vouch for in a child forked from a pre-warmed,
single-threaded zygote (zygote.py), and polls as soon as Prefect announces a Scheduled run in its
pool. Runs it cannot vouch for take the stock path (`ProcessWorker.run`).

Built for Prefect 3.9.1 (pyproject pins >=3.9.1,<3.10); the private pieces it relies on are
checked by tests/unit/orchestration/test_warm_worker_contract.py.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle
from prefect.runner._workspace_hook_runner import WorkspaceHookRunner
from prefect.runner._workspace_resolver import _resolve_runtime_entrypoint
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from mailsync.orchestration.poll_schedule import PollSchedule
from mailsync.orchestration.warm_start import (
    Zygote,
    ZygoteStarter,
    preloaded_entrypoints,
    project_dir,
)

WORKER_TYPE = "mailsync-warm"
SET_WORKING_DIRECTORY = "prefect.deployments.steps.set_working_directory"
_ENV_TEMPLATE = re.compile(r"^\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}$")
SCHEDULED_EVENT = "prefect.flow-run.Scheduled"


class RecentDeployments:
    """`read_deployment`, answered from the last `ttl` seconds' reads of the same deployment.

    Submitting one run reads its deployment three times within ~0.3 s (BaseWorker's check
    that it exists, the job configuration, `warm_plan`), serially, before the run can start.
    A deployment changed within `ttl` of a submission may reach it a moment late, as it could
    between those reads anyway. Each caller gets its own copy."""

    def __init__(
        self,
        read: Callable[[UUID | str], Awaitable[DeploymentResponse]],
        ttl: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read, self.ttl, self._clock = read, ttl, clock
        self._recent: dict[UUID | str, tuple[float, DeploymentResponse]] = {}

    async def __call__(self, deployment_id: UUID | str) -> DeploymentResponse:
        now = self._clock()
        self._recent = {k: v for k, v in self._recent.items() if now - v[0] < self.ttl}
        if deployment_id not in self._recent:
            self._recent[deployment_id] = (now, await self._read(deployment_id))
        return self._recent[deployment_id][1].model_copy(deep=True)


class WarmProcessWorker(ProcessWorker):
    type = WORKER_TYPE
    _description = (
        "Process worker that forks each flow run from a pre-warmed parent with Prefect and the"
        " project's flows imported; serves `process` work pools."
    )
    _display_name = "Process (warm)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._zygote: Zygote | None = None
        self._poll_now = anyio.Event()

    def _record_work_pool_snapshot(self, work_pool: WorkPool) -> None:
        """BaseWorker's, without the type-mismatch warning for `process` pools: this worker
        serves them with ProcessWorker's job configuration."""
        work_pool = copy.deepcopy(work_pool)
        if not work_pool.base_job_template:
            work_pool.base_job_template = self.__class__.get_default_base_job_template()
        if work_pool.type not in (self.type, ProcessWorker.type):
            self._logger.warning(
                f"Worker type mismatch! This worker serves {self.type!r} and 'process' pools"
                f" but received {work_pool.type!r} from the server."
            )
        self._work_pool = work_pool

    async def setup(self) -> None:
        await super().setup()
        client = self.client
        client.read_deployment = RecentDeployments(client.read_deployment)  # type: ignore[method-assign]
        directory = project_dir()
        self._zygote = Zygote(directory, preloaded_entrypoints(directory))
        self._zygote.start()
        self._exit_stack.callback(self._zygote.stop)
        services = anyio.create_task_group()
        await self._exit_stack.enter_async_context(services)
        self._exit_stack.callback(services.cancel_scope.cancel)  # runs first: LIFO
        services.start_soon(self._watch_zygote)
        services.start_soon(self._subscribe_to_scheduled_runs)
        services.start_soon(self._poll_on_events)

    async def _watch_zygote(self) -> None:
        assert self._zygote is not None
        await self._zygote.wait_ready()
        if self._zygote.problem:
            self._logger.warning(
                "Warm start unavailable (%s); every flow run takes the stock process path.",
                self._zygote.problem,
            )
        else:
            self._logger.info("Warm start ready: %s", self._zygote.probe)

    async def _subscribe_to_scheduled_runs(self) -> None:
        """Wake the poller when Prefect announces a Scheduled run in this pool; the normal
        poll (PREFECT_WORKER_QUERY_SECONDS) is the fallback whenever this is down."""
        while self._work_pool is None:
            await anyio.sleep(0.2)
        pool_resource = f"prefect.work-pool.{self._work_pool.id}"
        event_filter = EventFilter(
            event=EventNameFilter(name=[SCHEDULED_EVENT]),
            related=EventRelatedFilter(id=[pool_resource]),
        )
        while True:
            try:
                async with get_events_subscriber(filter=event_filter) as subscriber:
                    async for _event in subscriber:
                        self._poll_now.set()
            except Exception as exc:
                self._logger.debug("Scheduled-run events unavailable: %s", exc)
            await anyio.sleep(5)

    async def _poll_on_events(self) -> None:
        schedule = PollSchedule()
        while True:
            event = self._poll_now
            wait = schedule.wait_seconds(time.monotonic())
            with anyio.move_on_after(wait if wait is not None else math.inf):
                await event.wait()
            if event.is_set():
                self._poll_now = anyio.Event()
                schedule.on_event(time.monotonic())
                continue
            if schedule.take_due(time.monotonic()):
                try:
                    await self.get_and_submit_flow_runs()
                except Exception:
                    self._logger.exception("Event-triggered poll failed")

    async def warm_plan(
        self, flow_run: FlowRun, configuration: ProcessJobConfiguration
    ) -> tuple[Path, str] | str:
        """(working directory, runtime entrypoint) for the warm path, or why not."""
        if self._zygote is None or not await self._zygote.ready():
            return f"no warm parent ({self._zygote.problem if self._zygote else 'not started'})"
        if configuration._command_configured:
            return "the job sets its own command"
        if flow_run.deployment_id is None:
            return "not a deployment's run"
        deployment = await self.client.read_deployment(flow_run.deployment_id)
        if deployment.entrypoint not in self._zygote.loaded():
            return f"entrypoint {deployment.entrypoint!r} is not preloaded"
        steps = deployment.pull_steps or []
        if len(steps) != 1 or list(steps[0]) != [SET_WORKING_DIRECTORY]:
            return "pull steps other than one set_working_directory"
        directory = str((steps[0][SET_WORKING_DIRECTORY] or {}).get("directory") or "")
        template = _ENV_TEMPLATE.match(directory)
        if template:
            directory = str({**os.environ, **configuration.env}.get(template.group(1)) or "")
        elif "{{" in directory:
            return f"pull step directory {directory!r} is a template we do not resolve"
        if not directory or Path(directory).resolve() != self._zygote.directory:
            return f"pull step directory {directory!r} is not the preloaded project"
        if not {**os.environ, **configuration.env}.get("PREFECT_API_URL"):
            return "PREFECT_API_URL is not set (never an ephemeral server)"
        return self._zygote.directory, _resolve_runtime_entrypoint(deployment.entrypoint)

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        plan = await self.warm_plan(flow_run, configuration)
        if isinstance(plan, str):
            self._logger.info("Flow run %s takes the stock path: %s", flow_run.id, plan)
            return await super().run(flow_run, configuration, task_status)
        if task_status is None:
            task_status = anyio.TASK_STATUS_IGNORED
        assert self._zygote is not None
        directory, entrypoint = plan
        self._logger.debug("Flow run %s takes the warm path", flow_run.id)
        execution: FlowRunExecutionResult | None = None
        async with FlowRunExecutorContext() as ctx:
            runtime = Path(tempfile.mkdtemp(prefix="mailsync-warm-"))
            ctx.call_after_exit(lambda: shutil.rmtree(runtime, ignore_errors=True))
            starter = ZygoteStarter(
                zygote=self._zygote,
                env=configuration.env,
                cwd=directory,
                entrypoint=entrypoint,
                stream_output=configuration.stream_output,
                control_channel=ctx.control_channel,
                manifest_path=runtime / "workspace.json",
            )
            hooks = WorkspaceHookRunner(
                manifest_path=runtime / "workspace.json",
                stream_output=configuration.stream_output,
            )
            executor = ctx.create_executor(
                flow_run, starter, propose_submitting=False, hook_runner=hooks
            )

            async def execute(
                *, task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                nonlocal execution
                execution = await executor.submit(task_status=task_status)

            async with anyio.create_task_group() as task_group:
                handle = await task_group.start(execute)
                if handle.pid is None:
                    raise RuntimeError("Flow run process has no PID")
                task_status.started(handle.pid)
        if execution is None or execution.status_code is None:
            raise RuntimeError("Failed to start flow run process.")
        return ProcessWorkerResult(
            status_code=execution.status_code, identifier=str(execution.handle.pid)
        )
