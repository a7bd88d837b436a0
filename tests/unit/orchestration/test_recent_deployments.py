"""RecentDeployments: the warm worker's short memory of deployment reads."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from prefect.client.schemas.responses import DeploymentResponse

from mailsync.orchestration.warm_worker import RecentDeployments


def test_reads_within_the_ttl_are_one_read_and_each_caller_gets_its_own_copy() -> None:
    """Three reads of a deployment within `ttl` reach Prefect once; a read after it reaches
    Prefect again; a caller that changes its answer does not change the next caller's."""
    deployment_id = uuid4()
    reads: list[object] = []
    now = [100.0]

    async def read(requested: object) -> DeploymentResponse:
        reads.append(requested)
        return DeploymentResponse(
            id=deployment_id, name="sync", flow_id=uuid4(), job_variables={"env": {"A": "1"}}
        )

    recent = RecentDeployments(read, ttl=2.0, clock=lambda: now[0])

    async def scenario() -> None:
        first = await recent(deployment_id)
        first.job_variables["env"]["A"] = "changed"
        now[0] += 1.0
        second = await recent(deployment_id)
        assert second.job_variables == {"env": {"A": "1"}}
        await recent(deployment_id)
        assert len(reads) == 1
        now[0] += 1.5
        await recent(deployment_id)
        assert len(reads) == 2

    asyncio.run(scenario())
