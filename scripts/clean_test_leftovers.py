"""Remove what earlier test runs left on the shared servers: test databases, roles, queues, vhosts.

Every test object is named `<prefix>_<8 hex>` (tests/conftest.py `unique_name`), so a killed run's
leftovers can be told from anything else. They cost: each leftover quorum queue keeps a Ra server
and its log on the broker, and a broker that has collected hundreds of them is slower to start and
to declare. `.ci/run` calls this before the tests; run it yourself only when no test run is going
on against the same servers (it would pull a running test's objects away).

    python scripts/clean_test_leftovers.py [--dry-run]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys

import asyncpg

from shared.messaging.topology import delete_broker_objects

# The prefixes tests give `unique_name`, then `_` and eight hex digits.
TEST_NAME = re.compile(r"^(spinetest|backbone|brk|model|chaos)_[0-9a-f]{8}")


def _ctl(*args: str) -> list[str]:
    """The lines rabbitmqctl prints (quiet, no table headers); [] when it cannot run."""
    if shutil.which("rabbitmqctl") is None:
        return []
    ran = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True,  # nosec B603 B607 # a fixed tool, no shell
                         timeout=120, check=False)
    if ran.returncode != 0:
        print(f"rabbitmqctl {' '.join(args)}: {ran.stderr.strip() or ran.returncode}", file=sys.stderr)
        return []
    return [line for line in ran.stdout.splitlines() if line.strip()]


def broker_leftovers() -> dict[str, list[str]]:
    """Test queues and exchanges of the default vhost, and test vhosts and users."""
    found: dict[str, list[str]] = {}
    for kind, args in (("queue", ("list_queues", "name", "--no-table-headers")),
                       ("exchange", ("list_exchanges", "name", "--no-table-headers")),
                       ("vhost", ("list_vhosts", "--no-table-headers")),
                       ("user", ("list_users", "--no-table-headers"))):
        names = [line.split("\t")[0].strip() for line in _ctl(*args)]
        found[kind] = sorted(n for n in names if TEST_NAME.match(n))
    return found


async def database_leftovers(pg_url: str) -> tuple[list[str], list[str]]:
    conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
    try:
        databases = [r[0] for r in await conn.fetch("SELECT datname FROM pg_database")]
        roles = [r[0] for r in await conn.fetch("SELECT rolname FROM pg_roles")]
    finally:
        await conn.close()
    return (sorted(d for d in databases if TEST_NAME.match(d)),
            sorted(r for r in roles if TEST_NAME.match(r)))


async def drop_databases(pg_url: str, databases: list[str], roles: list[str]) -> None:
    conn = await asyncpg.connect(f"{pg_url.rstrip('/')}/postgres")
    try:
        for name in databases:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for name in roles:
            # A role that still owns something elsewhere is left, named: nothing is forced.
            try:
                await conn.execute(f'DROP ROLE IF EXISTS "{name}"')
            except asyncpg.PostgresError as exc:
                print(f"role {name} kept: {exc}", file=sys.stderr)
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    parser.add_argument("--pg-url", default=os.environ.get("SPINE_PG_URL")
                        or "postgresql://postgres@127.0.0.1:5432",
                        help="PostgreSQL as an administrator (default SPINE_PG_URL or the local one)")
    parser.add_argument("--amqp-url", default=os.environ.get("SPINE_AMQP_URL")
                        or "amqp://guest:guest@127.0.0.1:5672/",
                        help="RabbitMQ (default SPINE_AMQP_URL or the local one)")
    args = parser.parse_args()

    databases, roles = asyncio.run(database_leftovers(args.pg_url))
    broker = broker_leftovers()
    counts = {"database": len(databases), "role": len(roles),
              **{kind: len(names) for kind, names in broker.items()}}
    summary = ", ".join(f"{n} {kind}(s)" for kind, n in counts.items())
    if args.dry_run:
        for kind, names in {"database": databases, "role": roles, **broker}.items():
            for name in names:
                print(f"would remove {kind} {name}")
        print(f"test leftovers: {summary}")
        return 0
    asyncio.run(drop_databases(args.pg_url, databases, roles))
    for failure in asyncio.run(delete_broker_objects(args.amqp_url, broker["queue"], broker["exchange"])):
        print(f"left: {failure}", file=sys.stderr)
    for name in broker["vhost"]:
        _ctl("delete_vhost", name)
    for name in broker["user"]:
        _ctl("delete_user", name)
    print(f"removed test leftovers: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
