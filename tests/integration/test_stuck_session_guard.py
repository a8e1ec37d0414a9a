"""The suite's guard against sessions stuck in a transaction notices one."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from tests.conftest import STUCK_AFTER_S, Servers, StuckSessionWatch


async def test_the_guard_notices_a_spine_session_left_idle_inside_a_transaction(
    servers: Servers, stuck_session_watch: StuckSessionWatch
) -> None:
    app = f"spine-guard-test-{uuid.uuid4().hex[:8]}"
    stuck_session_watch.expected.add(app)  # stuck on purpose: must not fail the run
    conn = await asyncpg.connect(f"{servers.pg_url}/postgres",
                                 server_settings={"application_name": app})
    try:
        await conn.execute("BEGIN")
        deadline = time.monotonic() + STUCK_AFTER_S + 5
        while app not in stuck_session_watch.expected_seen:
            assert time.monotonic() < deadline, "the guard never noticed the stuck session"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
