"""Another team's Serve application on the same Ray cluster as infaas (tests/integration/
test_two_nodes.py): it must keep running whatever infaas deploys or stops."""

from __future__ import annotations

from ray import serve
from starlette.requests import Request


@serve.deployment(name="Analytics", ray_actor_options={"num_cpus": 0})
class Analytics:
    async def __call__(self, request: Request) -> dict[str, str]:
        return {"team": "analytics"}


app = Analytics.bind()
