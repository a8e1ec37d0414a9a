"""The running services are connected to their databases as their runtime roles, nothing else."""

from __future__ import annotations

import asyncpg

from tests.e2e.conftest import Stack


async def test_every_service_session_is_its_own_runtime_role(stack: Stack) -> None:
    admin = await asyncpg.connect(stack.dsn("order"))
    try:
        rows = await admin.fetch(
            "SELECT datname, usename, application_name FROM pg_stat_activity "
            "WHERE datname = ANY($1::text[]) AND application_name LIKE 'spine-%'",
            [stack.database(s.name) for s in stack.services])
    finally:
        await admin.close()
    logins = {(r["datname"], r["usename"]) for r in rows}
    assert logins == {(stack.database(s.name), stack.roles(s.name).runtime) for s in stack.services}
