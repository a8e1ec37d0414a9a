"""The suite's guard against sessions stuck in a transaction notices one (and only Spine's)."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from tests.conftest import STUCK_AFTER_S, Servers, StuckSessionWatch


async def test_the_guard_notices_a_spine_session_left_idle_inside_a_transaction(
    servers: Servers, stuck_session_watch: StuckSessionWatch
) -> None:
    conn = await asyncpg.connect(f"{servers.pg_url}/postgres",
                                 server_settings={"application_name": "spine-guard-test"})
    pid = conn.get_server_pid()
    try:
        await conn.execute("BEGIN")
        deadline = time.monotonic() + STUCK_AFTER_S + 5
        while ("postgres", pid) not in stuck_session_watch.seen:
            assert time.monotonic() < deadline, "the guard never noticed the stuck session"
            await asyncio.sleep(0.2)
        assert "idle in transaction" in stuck_session_watch.seen[("postgres", pid)]
    finally:
        await conn.close()
        # It was put there on purpose: this one must not fail the run.
        stuck_session_watch.seen.pop(("postgres", pid), None)
