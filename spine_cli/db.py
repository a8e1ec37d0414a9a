"""`spine db setup|drop`: create and migrate each service's database, or drop a prefix's databases."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

import click

from shared import registry
from spine_cli.errors import CliError, debugging, exit_with
from spine_cli.groups import OrderedGroup

if TYPE_CHECKING:
    from spine_cli.settings import CliSettings

# As ServiceSettings.db_prefix requires: a database name is `<prefix>_<suffix>`, unquoted-safe.
PREFIX = re.compile(r"^[a-z][a-z0-9_]*$")


@click.group("db", cls=OrderedGroup)
def db() -> None:
    """Create, migrate or drop the services' databases."""


@db.command("setup")
@click.option("--service", type=click.Choice(registry.NAMES), help="Only this service.")
@click.option("--prefix", help="Database name prefix (default: SPINE_DB_PREFIX or spine).")
def setup(service: str | None, prefix: str | None) -> None:
    """Create each service's database and roles if missing, migrate it, grant the runtime rights.

    SPINE_PG_URL must log in as an administrator. The migrations run as the owner role
    `<database>_owner`; the service logs in as `<database>_runtime`, whose password is
    SPINE_DB_PASSWORD when set (then only with --service: each service has its own).
    """
    from alembic.script import ScriptDirectory

    from shared.db.migrate import SERVICES_DIR, alembic_config
    from shared.db.roles import DatabaseRoles, setup_database
    from spine_cli.settings import REPO_ROOT, load_settings

    settings = load_settings()
    prefix = _checked_prefix(prefix) if prefix else settings.db_prefix
    password = settings.db_password.get_secret_value() if settings.db_password else None
    if password is not None and service is None:
        raise CliError("SPINE_DB_PASSWORD is one service's runtime password: "
                       "name the service with --service", code=2)
    services = [registry.get(service)] if service else list(registry.SERVICES)
    base = settings.pg_url.rstrip("/")
    failures = 0
    for svc in services:
        roles = DatabaseRoles.of(svc, prefix)
        label = f"{svc.name:<13} {roles.database:<22}"
        env_py = SERVICES_DIR / svc.name / "migrations" / "env.py"
        if not env_py.is_file():
            click.echo(f"{label} skipped: {env_py.relative_to(REPO_ROOT)} does not exist yet", err=True)
            continue
        before = _pg(settings, _current_revision(base, roles.database))
        try:
            created = _pg(settings, setup_database(base, svc, prefix, password))
        except CliError:
            raise
        except Exception as exc:  # a broken migration: report it, carry on with the others
            if debugging():
                raise
            failures += 1
            click.echo(f"{label} FAILED: {exc.__class__.__name__}: {exc}", err=True)
            continue
        after = _pg(settings, _current_revision(base, roles.database))
        url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{roles.database}"
        heads = ScriptDirectory.from_config(alembic_config(svc.name, url)).get_heads()
        what = "created" if created else "exists"
        if before == after:
            outcome = f"already at head {after or '(no revisions)'}"
        else:
            outcome = f"migrated {before or '(empty)'} -> {after}"
        if after and heads and after not in heads:
            outcome += f" (head is {', '.join(heads)})"
        click.echo(f"{label} {what}; {outcome}; runs as {roles.runtime}")
    exit_with(1 if failures else 0)


@db.command("drop")
@click.option("--prefix", required=True, help="E.g. spine_test_1a2b.")
@click.option("--yes", is_flag=True, help="Really drop them.")
def drop(prefix: str, yes: bool) -> None:
    """Drop the four databases of a prefix and their roles (tests and clean-ups)."""
    from shared.db.roles import DatabaseRoles, drop_database_and_roles
    from spine_cli.settings import load_settings

    prefix = _checked_prefix(prefix)
    all_roles = [DatabaseRoles.of(svc, prefix) for svc in registry.SERVICES]
    names = [roles.database for roles in all_roles]
    if not yes:
        raise CliError(f"refusing to drop {', '.join(names)} and their roles without --yes",
                       code=2)
    settings = load_settings()
    base = settings.pg_url.rstrip("/")

    async def drop_all() -> list[tuple[str, bool]]:
        import asyncpg

        conn = await asyncpg.connect(f"{base}/postgres")
        try:
            existing = {r["datname"] for r in await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", names)}
        finally:
            await conn.close()
        for roles in all_roles:
            await drop_database_and_roles(base, roles)  # the roles too, even if the database is gone
        return [(name, name in existing) for name in names]

    for name, existed in _pg(settings, drop_all()):
        click.echo(f"{name:<24} {'dropped' if existed else 'did not exist'}")


def _checked_prefix(prefix: str) -> str:
    if not PREFIX.match(prefix):
        raise CliError(f"--prefix {prefix!r} must match {PREFIX.pattern}", code=2)
    return prefix


async def _current_revision(base: str, database: str) -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(f"{base}/{database}")
    except asyncpg.InvalidCatalogNameError:  # not created yet
        return None
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version ORDER BY 1")
    except asyncpg.UndefinedTableError:
        return None
    finally:
        await conn.close()
    return ", ".join(r["version_num"] for r in rows) or None


def _pg(settings: CliSettings, coro: Any) -> Any:
    """Run one PostgreSQL coroutine, turning "cannot connect" into a readable error."""
    import asyncpg

    from spine_cli.settings import redact

    try:
        return asyncio.run(coro)
    except (OSError, asyncpg.CannotConnectNowError, TimeoutError) as exc:
        raise CliError(
            f"PostgreSQL at {redact(settings.pg_url)} does not answer ({exc}). Start it with "
            "`make services-up`, or point SPINE_PG_URL at a server that runs."
        ) from exc
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        raise CliError(f"PostgreSQL at {redact(settings.pg_url)} refused the login: {exc}") from exc
    except asyncpg.InsufficientPrivilegeError as exc:
        raise CliError(f"PostgreSQL refused: {exc} (SPINE_PG_URL must log in as an administrator "
                       "that may create roles and databases)") from exc
