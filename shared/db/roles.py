"""Each service's database, its two roles and their rights: what `spine db setup` applies.

Per service and database prefix there are two roles, both named after the database so that the
isolated stacks of the tests (a prefix each) never share one:

- `<database>_owner` owns the database, its `public` schema and every object in it. It has no
  LOGIN: migrations run as it through the administrator's connection (`SET ROLE`), so no owner
  password exists to leak, and no migration can do what only a superuser may.
- `<database>_runtime` is what the service logs in as. It may connect to its own database only
  (CONNECT is revoked from PUBLIC on every service database), use the schema but create nothing
  in it, and SELECT, INSERT and UPDATE the tables — except `audit_log` (SELECT and INSERT: the
  history is append-only) and `alembic_version` (SELECT). Nothing in Spine deletes a row, so
  no table grants DELETE or TRUNCATE.

Everything here is idempotent: setup re-applies the rights after every migration, so a table a
new revision creates gets them too. The administrator (`SPINE_PG_URL`) must be a superuser, or
have CREATEROLE and CREATEDB and be a member of the owner roles.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import asyncpg

from shared.registry import Service

# Table privileges of the runtime role: what the services' statements need, and no more.
RUNTIME_TABLE_PRIVILEGES = "SELECT, INSERT, UPDATE"
# Tables whose rights are narrower than that, and what they are.
NARROWER = {"audit_log": "SELECT, INSERT", "alembic_version": "SELECT"}
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


@dataclass(frozen=True)
class DatabaseRoles:
    """The names of one service's database and roles under one prefix."""

    database: str
    owner: str
    runtime: str

    @classmethod
    def of(cls, service: Service, prefix: str) -> DatabaseRoles:
        database = service.database(prefix)
        return cls(database, owner=f"{database}_owner", runtime=f"{database}_runtime")


def new_password() -> str:
    """A random password for a runtime role (URL-safe, so it needs no quoting in a URL)."""
    return secrets.token_urlsafe(24)


def scram_verifier(password: str, *, salt: bytes | None = None,
                   iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / RFC 7677).

    Setup sends this, never the password itself, so the password cannot appear in the server's
    statement log or statistics. (PostgreSQL SASLprep-normalises passwords; the generated ones
    are plain ASCII, which normalisation leaves as they are.)
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def ensure_database_and_roles(admin_url: str, roles: DatabaseRoles,
                                    runtime_password: str | None = None) -> bool:
    """The two roles, the database owned by the owner, CONNECT for them only; True if created.

    `runtime_password` (re)sets the runtime role's password; without one a new runtime role has
    none, which only a server that trusts local connections accepts (development).
    """
    conn = await asyncpg.connect(f"{admin_url.rstrip('/')}/postgres")
    try:
        await _ensure_role(conn, roles.owner, login=False)
        await _ensure_role(conn, roles.runtime, login=True)
        if runtime_password is not None:
            await conn.execute(await _quoted(
                conn, "ALTER ROLE %I PASSWORD %L", roles.runtime, scram_verifier(runtime_password)))
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", roles.database)
        if exists:
            await conn.execute(await _quoted(conn, "ALTER DATABASE %I OWNER TO %I",
                                             roles.database, roles.owner))
        else:
            await conn.execute(await _quoted(conn, "CREATE DATABASE %I OWNER %I",
                                             roles.database, roles.owner))
        for statement in (
            "REVOKE ALL ON DATABASE %I FROM PUBLIC",
            "GRANT CONNECT ON DATABASE %I TO %I",
        ):
            await conn.execute(await _quoted(conn, statement, roles.database, roles.runtime))
    finally:
        await conn.close()
    await _own_the_schema(admin_url, roles)
    return not exists


async def grant_runtime_rights(admin_url: str, roles: DatabaseRoles) -> None:
    """After migrating: the runtime role's rights on every table and sequence, as listed above."""
    conn = await asyncpg.connect(f"{admin_url.rstrip('/')}/{roles.database}")
    try:
        async with conn.transaction():
            tables = [r["relname"] for r in await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v') ORDER BY 1")]
            for table in tables:
                # Revoke first: a right granted by an earlier setup (or by hand) does not linger.
                await conn.execute(await _quoted(conn, "REVOKE ALL ON TABLE %I FROM %I",
                                                 table, roles.runtime))
                rights = NARROWER.get(table, RUNTIME_TABLE_PRIVILEGES)
                await conn.execute(await _quoted(conn, f"GRANT {rights} ON TABLE %I TO %I",
                                                 table, roles.runtime))
            await conn.execute(await _quoted(
                conn, "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %I", roles.runtime))
    finally:
        await conn.close()


async def drop_database_and_roles(admin_url: str, roles: DatabaseRoles) -> None:
    """Drop the database (closing its sessions), then its two roles; safe when none exist."""
    conn = await asyncpg.connect(f"{admin_url.rstrip('/')}/postgres")
    try:
        await conn.execute(await _quoted(conn, "DROP DATABASE IF EXISTS %I WITH (FORCE)",
                                         roles.database))
        for role in (roles.runtime, roles.owner):
            # Their only rights and objects were in that database (or on it), so nothing holds them.
            await conn.execute(await _quoted(conn, "DROP ROLE IF EXISTS %I", role))
    finally:
        await conn.close()


async def _own_the_schema(admin_url: str, roles: DatabaseRoles) -> None:
    """The owner owns the schema and whatever is in it; nobody else may create anything there."""
    conn = await asyncpg.connect(f"{admin_url.rstrip('/')}/{roles.database}")
    try:
        async with conn.transaction():
            for statement in (
                "ALTER SCHEMA public OWNER TO %I",
                "REVOKE ALL ON SCHEMA public FROM PUBLIC",
            ):
                await conn.execute(await _quoted(conn, statement, roles.owner))
            await conn.execute(await _quoted(conn, "GRANT USAGE ON SCHEMA public TO %I",
                                             roles.runtime))
            # A database migrated before roles existed (by the administrator) is handed over.
            for (statement,) in await conn.fetch(_ADOPT, roles.owner):
                await conn.execute(statement)
    finally:
        await conn.close()


# Tables, views, free-standing sequences and functions in `public` that the owner does not own.
# (Identity sequences follow their table.)
_ADOPT = """
SELECT format('ALTER TABLE %I OWNER TO %I', c.relname, $1::text)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm') AND c.relowner <> $1::regrole
UNION ALL
SELECT format('ALTER SEQUENCE %I OWNER TO %I', c.relname, $1::text)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'S' AND c.relowner <> $1::regrole
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i'))
UNION ALL
SELECT format('ALTER FUNCTION %s OWNER TO %I', p.oid::regprocedure, $1::text)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public' AND p.proowner <> $1::regrole
"""


async def _ensure_role(conn: asyncpg.Connection, name: str, *, login: bool) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name)
    # NOINHERIT and no membership anywhere: the role has exactly the rights granted to it.
    options = "LOGIN NOINHERIT" if login else "NOLOGIN NOINHERIT"
    verb = "ALTER" if exists else "CREATE"
    try:
        await conn.execute(await _quoted(conn, f"{verb} ROLE %I {options}", name))
    except asyncpg.DuplicateObjectError:  # created meanwhile by a concurrent setup
        await conn.execute(await _quoted(conn, f"ALTER ROLE %I {options}", name))


async def _quoted(conn: asyncpg.Connection, template: str, *args: str) -> str:
    """A statement whose identifiers (%I) and literals (%L) the server itself quoted."""
    # DDL takes no bind parameters; format() quotes exactly as PostgreSQL parses.
    return str(await conn.fetchval("SELECT format($1::text, " + ", ".join(
        f"${i + 2}::text" for i in range(len(args))) + ")", template, *args))


async def setup_database(admin_url: str, service: Service, prefix: str,
                         runtime_password: str | None = None) -> bool:
    """Roles, database, migrations as the owner, then the runtime rights; True if created."""
    from shared.db.migrate import upgrade

    roles = DatabaseRoles.of(service, prefix)
    created = await ensure_database_and_roles(admin_url, roles, runtime_password)
    await asyncio.to_thread(upgrade, service.name, owner_url(admin_url, roles), role=roles.owner)
    await grant_runtime_rights(admin_url, roles)
    return created


def owner_url(admin_url: str, roles: DatabaseRoles) -> str:
    """The SQLAlchemy URL migrations use: the administrator's login, to the service's database."""
    return f"{admin_url.rstrip('/').replace('postgresql://', 'postgresql+asyncpg://', 1)}/{roles.database}"
