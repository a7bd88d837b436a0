"""The Prefect pieces the warm worker relies on, private ones included: a Prefect upgrade that
changes one of them fails here, before a warm run can start half-configured."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from importlib.metadata import version

import prefect.engine
import prefect.runner._starter_engine as starter_engine
from prefect._internal import control_listener
from prefect.context import refresh_global_settings_context
from prefect.runner._control_channel import ControlChannel
from prefect.runner._flow_run_executor import FlowRunExecutorContext
from prefect.runner._process_manager import ProcessHandle, create_isolated_termination_scope
from prefect.runner._workspace_hook_runner import WorkspaceHookRunner
from prefect.runner._workspace_runtime import PreparedWorkspaceManifest
from prefect.runner._workspace_supervisor import _hook_command
from prefect.workers.base import BaseWorker
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker

from mailsync.orchestration.warm_start import ForkedProcess
from mailsync.orchestration.warm_worker import WORKER_TYPE, WarmProcessWorker


def test_built_for_this_prefect() -> None:
    """The version the warm worker was verified on (pyproject pins >=3.9.1,<3.10)."""
    assert version("prefect").startswith("3.9."), version("prefect")


def test_the_worker_type_is_discovered() -> None:
    """`prefect worker start --type mailsync-warm` finds our class through the
    prefect.collections entry point; `process` is still Prefect's own."""
    assert BaseWorker.get_worker_class_from_type(WORKER_TYPE) is WarmProcessWorker
    assert BaseWorker.get_worker_class_from_type("process") is ProcessWorker


def test_the_pieces_of_the_stock_run_path() -> None:
    """ProcessWorker.run's building blocks, which the warm path reuses, keep their shape."""
    params = inspect.signature(ProcessWorker.run).parameters
    assert list(params) == ["self", "flow_run", "configuration", "task_status"]
    assert "_command_configured" in ProcessJobConfiguration.__private_attributes__
    assert {"create_executor", "call_after_exit"} <= set(vars(FlowRunExecutorContext))
    create = inspect.signature(FlowRunExecutorContext.create_executor).parameters
    assert {"propose_submitting", "hook_runner"} <= set(create)
    assert list(inspect.signature(ControlChannel.register).parameters) == ["self", "flow_run_id"]
    assert "unregister" in vars(ControlChannel)
    handle = ProcessHandle(ForkedProcess(os.getpid(), 3), create_isolated_termination_scope(1))  # type: ignore[arg-type]
    assert handle.pid == os.getpid() and handle.returncode == 3
    assert set(PreparedWorkspaceManifest.model_fields) == {
        "working_directory",
        "project_root",
        "runtime_entrypoint",
        "hook_command",
        "environment",
    }
    assert _hook_command([sys.executable, "-m", "prefect.engine"]) is not None
    assert {"manifest_path", "stream_output"} <= set(
        inspect.signature(WorkspaceHookRunner).parameters
    )
    assert "_record_work_pool_snapshot" in vars(BaseWorker)


def test_the_environment_the_stock_starter_gives() -> None:
    """EngineCommandStarter still sets exactly the variables ZygoteStarter.environment copies."""
    source = inspect.getsource(starter_engine.EngineCommandStarter.start)
    for name in (
        "PREFECT__FLOW_RUN_ID",
        "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS",
        "PREFECT__CONTROL_PORT",
        "PREFECT__CONTROL_TOKEN",
        "PREFECT__DEPLOYMENT_NAME",
        "to_environment_variables(",
    ):
        assert name in source, name


def test_what_the_engine_reads_in_a_forked_child() -> None:
    """`python -m prefect.engine` reads the run id from argv[1] or PREFECT__FLOW_RUN_ID and the
    control channel once (configure_from_env, not yet configured after import); settings can
    be re-read from a changed environment."""
    main = inspect.getsource(prefect.engine).split('if __name__ == "__main__":', 1)[1]
    assert "PREFECT__FLOW_RUN_ID" in main and "configure_from_env()" in main
    assert control_listener._configured is False
    assert callable(refresh_global_settings_context)


def test_a_fresh_import_is_single_threaded_and_fork_safe() -> None:
    """What the zygote forks from: after importing Prefect and the engine, one thread, no
    socket, and Prefect resets its services in a forked child (os.register_at_fork)."""
    code = (
        "import os, prefect, prefect.engine, prefect.flow_engine;"
        "import prefect._internal.concurrency.services as s;"
        "print(len(os.listdir('/proc/self/task')), hasattr(s, '_reset_services_after_fork'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["1", "True"], out
