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
    """Create each service's database if missing and migrate it to head."""
    from alembic.script import ScriptDirectory

    from shared.db.migrate import SERVICES_DIR, alembic_config, ensure_database, upgrade
    from spine_cli.settings import REPO_ROOT, load_settings

    settings = load_settings()
    prefix = _checked_prefix(prefix) if prefix else settings.db_prefix
    services = [registry.get(service)] if service else list(registry.SERVICES)
    base = settings.pg_url.rstrip("/")
    failures = 0
    for svc in services:
        name = svc.database(prefix)
        label = f"{svc.name:<13} {name:<22}"
        env_py = SERVICES_DIR / svc.name / "migrations" / "env.py"
        if not env_py.is_file():
            click.echo(f"{label} skipped: {env_py.relative_to(REPO_ROOT)} does not exist yet", err=True)
            continue
        created = _pg(settings, ensure_database(base, name))
        before = _pg(settings, _current_revision(f"{base}/{name}"))
        url = f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
        try:
            upgrade(svc.name, url)
        except Exception as exc:  # a broken migration: report it, carry on with the others
            if debugging():
                raise
            failures += 1
            click.echo(f"{label} FAILED: {exc.__class__.__name__}: {exc}", err=True)
            continue
        after = _pg(settings, _current_revision(f"{base}/{name}"))
        heads = ScriptDirectory.from_config(alembic_config(svc.name, url)).get_heads()
        what = "created" if created else "exists"
        if before == after:
            outcome = f"already at head {after or '(no revisions)'}"
        else:
            outcome = f"migrated {before or '(empty)'} -> {after}"
        if after and heads and after not in heads:
            outcome += f" (head is {', '.join(heads)})"
        click.echo(f"{label} {what}; {outcome}")
    exit_with(1 if failures else 0)


@db.command("drop")
@click.option("--prefix", required=True, help="E.g. spine_test_1a2b.")
@click.option("--yes", is_flag=True, help="Really drop them.")
def drop(prefix: str, yes: bool) -> None:
    """Drop the four databases of a prefix (tests and clean-ups)."""
    from shared.db.migrate import drop_database
    from spine_cli.settings import load_settings

    prefix = _checked_prefix(prefix)
    names = [svc.database(prefix) for svc in registry.SERVICES]
    if not yes:
        raise CliError(f"refusing to drop {', '.join(names)} without --yes", code=2)
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
        for name in names:
            if name in existing:
                await drop_database(base, name)
        return [(name, name in existing) for name in names]

    for name, existed in _pg(settings, drop_all()):
        click.echo(f"{name:<24} {'dropped' if existed else 'did not exist'}")


def _checked_prefix(prefix: str) -> str:
    if not PREFIX.match(prefix):
        raise CliError(f"--prefix {prefix!r} must match {PREFIX.pattern}", code=2)
    return prefix


async def _current_revision(dsn: str) -> str | None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
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
        raise CliError(f"PostgreSQL refused: {exc} (does the SPINE_PG_URL role own it?)") from exc
