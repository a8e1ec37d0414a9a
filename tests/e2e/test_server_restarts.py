"""Restarts of the servers during a flow of orders: the services heal by themselves, nothing lost.

Each test runs the four services on private servers (tests.chaos.servers) — never the shared
ones — submits orders by AMQP and HTTP at a steady rate, and in the middle of the flow
restarts one server for real: RabbitMQ stopped gracefully (`stop_app` / `start_app`), the
RabbitMQ node SIGKILLed and started again, PostgreSQL restarted in immediate mode. Afterwards,
with nobody's help, every service must be ready again, every consumed queue must have a
consumer (the broker's own count), every outbox must be sent, and the chaos checker must find
no order or dispatch lost (dead letters count as lost), doubled or invented.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.run import RunConfig, RunResult, chaos_run
from tests.chaos.servers import private_servers_available

pytestmark = [
    pytest.mark.skipif(private_servers_available() is not None,
                       reason=f"private servers: {private_servers_available()}"),
    pytest.mark.timeout(400),
]



def seed() -> int:
    return int(os.environ.get("SPINE_CHAOS_SEED") or int.from_bytes(os.urandom(4), "big") >> 1)


async def flow_through(**restarts: int) -> RunResult:
    # 20 orders a second, and a server down 3-4 s (as long as a PostgreSQL restart takes on
    # a busy host): a delivery limit spent on the outage would dead-letter dozens.
    result = await chaos_run(RunConfig(orders=400, rate=20.0, seed=seed(), kills_per_service=0,
                                       server_down_s=(3.0, 4.0), **restarts))
    print(result.summary())
    return result


def assert_healed(result: RunResult, fault: str) -> None:
    assert result.report.figures["faults"] == {fault: 1}
    assert result.ok, f"{result.summary()}\n--- service logs (tail)\n{result.logs[-6000:]}"


async def test_a_graceful_broker_restart_during_a_flow_loses_and_doubles_nothing() -> None:
    assert_healed(await flow_through(rabbit_graceful=1), "rabbit-graceful")


async def test_a_killed_broker_started_again_during_a_flow_loses_and_doubles_nothing() -> None:
    assert_healed(await flow_through(rabbit_kills=1), "rabbit-kill")


async def test_an_immediate_database_restart_during_a_flow_loses_and_doubles_nothing() -> None:
    assert_healed(await flow_through(pg_restarts=1), "pg-immediate")
