"""The small chaos run: 1,000 orders through SIGKILLs and server restarts, checked afterwards.

The run owns private RabbitMQ and PostgreSQL servers (tests.chaos.servers), so nothing it does
reaches the servers other tests share. The seed is printed and in the failure message; replay
with `python -m tests.chaos.run --seed <seed> --orders 1000 --rate 15 --kills 3
--rabbit-graceful 1 --rabbit-kills 1 --pg-restarts 1`. `make soak` runs the large one.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import RunConfig, chaos_run
from tests.chaos.servers import private_servers_available

pytestmark = [
    pytest.mark.skipif(private_servers_available() is not None,
                       reason=f"private servers: {private_servers_available()}"),
    pytest.mark.timeout(600),
]


def seed() -> int:
    """SPINE_CHAOS_SEED replays a run; otherwise a fresh one, printed by the run."""
    return int(os.environ.get("SPINE_CHAOS_SEED") or int.from_bytes(os.urandom(4), "big") >> 1)


async def test_a_thousand_orders_through_sigkills_and_server_restarts_are_each_one_order_and_one_dispatch(
) -> None:
    config = RunConfig(orders=1000, rate=15.0, seed=seed(), kills_per_service=3,
                       rabbit_graceful=1, rabbit_kills=1, pg_restarts=1)
    result = await chaos_run(config)
    print(result.summary())
    assert result.report.figures["faults"] == {
        **{f"kill {name}": 3 for name in ("dispatch", "erp_adapter", "notification", "order")},
        "pg-immediate": 1, "rabbit-graceful": 1, "rabbit-kill": 1}
    assert result.ok, f"{result.summary()}\n--- service logs (tail)\n{result.logs[-6000:]}"
