"""The layout's rules, read from the code (README, Architecture): who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFECT_HOMES = (
    "mailsync/orchestration/",
    "mailsync/devstack/",
    "flows/",
    "tasks/",
    "deployments/",
)


def _modules(*tops: str) -> dict[str, Path]:
    found = {}
    for top in tops:
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            found[".".join(parts)] = path
    return found


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _uses(path: Path, package: str) -> bool:
    return any(n == package or n.startswith(package + ".") for n in _imports(path))


def test_prefect_is_imported_only_where_runs_are_orchestrated() -> None:
    """Only orchestration/ (and devstack/, which starts servers), flows/, tasks/ and
    deployments/ import Prefect: the domain, the API and the webhooks stay testable alone."""
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in _modules("mailsync", "flows", "tasks", "deployments").values()
        if _uses(path, "prefect")
        and not path.relative_to(ROOT).as_posix().startswith(PREFECT_HOMES)
    ]
    assert not offenders


def test_the_api_knows_neither_providers_nor_prefect() -> None:
    """The API layer imports no provider client and no Prefect: it talks to the orchestrator."""
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in _modules("mailsync/api").values()
        if _uses(path, "prefect") or _uses(path, "mailsync.providers")
    ]
    assert not offenders


def test_the_domain_imports_no_framework() -> None:
    """core/ is plain Python and SQLModel: no Prefect, no FastAPI, no orchestration."""
    offenders = [
        path.relative_to(ROOT).as_posix()
        for path in _modules("mailsync/core").values()
        if any(_uses(path, p) for p in ("prefect", "fastapi", "mailsync.orchestration"))
    ]
    assert not offenders


def _module_deps(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules `path` imports at its top level: `from pkg import sub` imports `sub`
    (the package is only being initialised, which Python allows), anything else the
    module named."""
    deps: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            deps.update(subs or ({node.module} & modules.keys()))
    return deps


def test_no_import_cycle_between_modules() -> None:
    """Module-level imports between mailsync's modules form no cycle (a cycle is a layering
    mistake, and breaks when either module is imported first)."""
    modules = _modules("mailsync")
    graph = {name: _module_deps(path, modules) - {name} for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles


def test_no_module_is_over_400_lines() -> None:
    """Modules stay readable in one sitting: none of the library, flows or tasks passes 400
    lines (split by concern instead)."""
    long = {
        path.relative_to(ROOT).as_posix(): n
        for path in _modules("mailsync", "flows", "tasks", "deployments").values()
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert not long


TEST_HOMES = ("unit", "integration", "drills", "support")


def test_tests_live_in_their_four_homes() -> None:
    """Every test module is a unit test, an integration test or a drill (README, Tests), and
    what they share is in tests/support: nothing else lives under tests/."""
    stray = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if path.parent != ROOT / "tests"
        and path.relative_to(ROOT / "tests").parts[0] not in TEST_HOMES
    ]
    assert not stray
    assert {p.name for p in (ROOT / "tests").glob("*.py")} == {"conftest.py"}


def test_tests_share_helpers_only_through_support() -> None:
    """A test module imports no other test module (nor a conftest): shared fixtures and helpers
    are in tests/support, so moving or deleting one test never breaks another."""
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "tests").rglob("*.py")
        for name in _imports(path, top_level_only=False)
        if name.startswith("tests.") and not name.startswith("tests.support")
    }
    assert not wrong


def test_the_service_runs_without_the_demo_extra() -> None:
    """`pip install .` leaves out the fakes' dependency (trustme, the [demo] extra): the API,
    the CLI, the flows and the warm worker import without it, and `mailsync --help` runs."""
    import subprocess
    import sys

    blocked = (
        "import sys; sys.modules['trustme'] = None\n"
        "import mailsync.api.app, mailsync.cli, mailsync.orchestration.warm_worker\n"
        "import flows.sync_mailbox, flows.refresh, flows.deliver_webhooks\n"
        "from mailsync.cli import app\n"
        "sys.argv = ['mailsync', '--help']\n"
        "app()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Usage" in done.stdout
