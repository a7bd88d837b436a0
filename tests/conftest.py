"""The suite's hooks; its fixtures live in tests/support (registered below)."""

from __future__ import annotations

import pytest

from tests.support.databases import PG_PROBLEM, POSTGRES_ADMIN_URL

pytest_plugins = [
    "tests.support.databases",
    "tests.support.stack",
    "tests.support.api",
    "tests.support.receiver",
    "tests.support.bare_prefect",
    "tests.support.push",
]


# tryfirst: pytest-xdist turns `xdist_group` marks into node ids in its own hook of this name,
# which runs before a conftest's (it is registered later); without it the marks added here
# came too late and every worker built both databases' stacks (seen: six instead of two).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.only_database("postgresql")`: a test whose subject does not depend on the
    application database runs on that one only (the suite's time budget), deselected for the
    other rather than skipped. Tests on a shared Prefect stack are grouped by database."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("only_database")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if marker and "database_url" in params and params["database_url"] not in marker.args:
            dropped.append(item)
            continue
        kept.append(item)
        if "database_url" in params:
            # Under `--dist loadgroup` (pytest-xdist) every test on one database runs in one
            # worker. `database_url` is a session fixture with two params: a worker that got
            # tests of both would switch between them, and each switch tears down and starts
            # again everything built on it, the ~40 s Prefect stack included.
            item.add_marker(pytest.mark.xdist_group(f"db-{params['database_url']}"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_report_header(config: pytest.Config) -> str:
    if PG_PROBLEM:
        return f"postgresql: tests SKIPPED ({PG_PROBLEM})"
    return f"postgresql: {POSTGRES_ADMIN_URL}"
