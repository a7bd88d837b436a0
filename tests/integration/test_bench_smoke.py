"""Every benchmark runs end to end at its smallest size and writes its result file.

Benchmarks are not part of the test suite; this only guards that `python -m bench` keeps
working (the figures in BENCHMARKS.md come from full-size runs by hand)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.harness import RESULTS

pytestmark = pytest.mark.integration


# The stack-based ones (trigger, e2e, fanout) start a whole local stack each, and fulltext
# repeats throughput's PostgreSQL runs four times: too slow for every CI run; they are run by
# hand with `--size tiny` before a release.
@pytest.mark.parametrize("name", ["throughput", "quota"])
def test_benchmark_runs_at_tiny_size(name: str) -> None:
    """`python -m bench <name> --size tiny` exits 0 and writes rows with the command, the
    machine and the date."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", name, "--size", "tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    document = json.loads((RESULTS / f"{name}-tiny.json").read_text())
    assert document["rows"] and document["command"].endswith(f"{name} --size tiny")
    assert document["machine"]["cores"] >= 1 and document["date"]
