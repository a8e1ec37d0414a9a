"""Each service's migrations build exactly the schema its `tables.py` declares.

The code reads and writes through `tables.py`; a production database only ever gets the
migrations. This migrates a fresh database to head and lets Alembic's autogenerate compare it
with the metadata, so a column, index, constraint, type, default or comment added on one side
only fails here instead of in production.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from shared.db.migrate import upgrade
from tests.conftest import DatabaseFactory

SERVICES = ["order", "dispatch", "notification", "erp_adapter"]


def metadata_of(service: str) -> sa.MetaData:
    return importlib.import_module(f"services.{service}.tables").metadata


async def on_database(url: str, work: Any) -> Any:
    engine = create_async_engine(url, poolclass=sa.NullPool)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(work)
    finally:
        await engine.dispose()


def named_constraints(sync_conn: sa.Connection) -> dict[str, set[tuple[Any, ...]]]:
    """Per table: primary key, foreign keys, unique and CHECK constraints, with their names."""
    inspector = sa.inspect(sync_conn)
    schema: dict[str, set[tuple[Any, ...]]] = {}
    for table in inspector.get_table_names():
        if table == "alembic_version":
            continue
        pk = inspector.get_pk_constraint(table)
        schema[table] = {
            ("pk", pk["name"], tuple(pk["constrained_columns"])),
            *(("fk", fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"],
               tuple(fk["referred_columns"])) for fk in inspector.get_foreign_keys(table)),
            *(("uq", uq["name"], tuple(uq["column_names"]))
              for uq in inspector.get_unique_constraints(table)),
            *(("ck", ck["name"], ck["sqltext"]) for ck in inspector.get_check_constraints(table)),
        }
    return schema


@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrations_build_the_tables_the_service_declares(
    service: str, databases: DatabaseFactory
) -> None:
    url = await databases(service)
    await asyncio.to_thread(upgrade, service, url)
    metadata = metadata_of(service)

    # Server defaults are compared too (autogenerate leaves them out unless asked). The
    # plumbing's triggers and functions are not in the metadata, and autogenerate does not
    # look for them, so they need no filter.
    differences = await on_database(url, lambda conn: compare_metadata(
        MigrationContext.configure(conn, opts={"compare_server_default": True}), metadata
    ))

    assert differences == [], f"{service}: tables.py and the migrations disagree: {differences}"


@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrations_name_and_word_the_constraints_as_the_service_declares_them(
    service: str, databases: DatabaseFactory
) -> None:
    # Autogenerate compares neither CHECK constraints nor the names of primary and foreign
    # keys, so compare those as PostgreSQL stores them: the migrated database against one built
    # straight from the metadata. (A constraint's name is what an error and an operator see.)
    migrated = await databases(service)
    await asyncio.to_thread(upgrade, service, migrated)
    declared = await databases(f"{service}_declared")
    await on_database(declared, metadata_of(service).create_all)

    assert await on_database(migrated, named_constraints) == await on_database(
        declared, named_constraints
    )
