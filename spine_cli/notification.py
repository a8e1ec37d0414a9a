"""`spine notification people import FILE`: load the people directory the notification rules use.

The command writes through the same handler and unit of work as `POST /people/imports`, into
the notification service's database, so it works before the service runs (`make run` could
load a people file first) and needs no token: whoever can reach the database is trusted here.
"""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path

import click

from spine_cli.errors import CliError, exit_with
from spine_cli.groups import OrderedGroup

EXIT_OK = 0
EXIT_REJECTED_ROWS = 1
EXIT_UNUSABLE_INPUT = 2  # also click's exit code for a usage error
EXIT_NO_DATABASE = 3

EPILOG = """\b
The file is CSV with a header row:
  id,name,roles,email,webhook_url,webhook_secret
roles separated by ';' or spaces; id and name required; a webhook_url needs a
webhook_secret (16+ characters). Unchanged people are left alone.

\b
Exit status:
  0  every row was imported (or was unchanged)
  1  some rows were rejected; the good rows were imported
  2  the file could not be read or is not a people CSV, or bad usage
  3  the notification database cannot be reached or is not migrated

\b
SPINE_PG_URL and SPINE_DB_PREFIX (or .env) name the database <prefix>_notification.
"""


@click.group("notification", cls=OrderedGroup)
def notification() -> None:
    """The notification service's data: the people directory."""


@notification.group("people", cls=OrderedGroup)
def people() -> None:
    """The people directory the notification rules resolve recipients against."""


@people.command("import", epilog=EPILOG)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check and count against the stored people, write nothing.")
def import_(file: Path, dry_run: bool) -> None:
    """Import people (id, name, roles, e-mail, webhook) from a CSV file.

    Each row is checked on its own: bad rows are listed and skipped, good rows are imported,
    unchanged rows are left alone.
    """
    exit_with(asyncio.run(_import(file, dry_run)))


async def _import(path: Path, dry_run: bool) -> int:
    import sqlalchemy as sa

    from services.notification.domain import UnreadablePeopleFile
    from services.notification.handlers import ImportPeople, handle
    from services.notification.unit_of_work import NAME, sql_unit_of_work
    from shared.contracts.envelope import Actor
    from shared.db.engine import make_engine
    from spine_cli.settings import NotificationCliSettings, load_settings

    try:
        content = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        raise CliError(f"{path.name}: cannot read {path}: {exc.strerror or exc}",
                       code=EXIT_UNUSABLE_INPUT) from None
    settings = load_settings(NotificationCliSettings)
    engine = make_engine(settings.database_url, pool_size=1, service=f"{NAME}-cli")
    try:
        try:
            async with engine.connect() as conn:
                migrated = await conn.scalar(sa.text("SELECT to_regclass('public.person')"))
        except Exception as exc:
            raise CliError(f"cannot use database {settings.database_name}: "
                           f"{exc.__class__.__name__} (create and migrate it: make migrate)",
                           code=EXIT_NO_DATABASE) from None
        if migrated is None:
            raise CliError(f"database {settings.database_name} is not migrated: make migrate",
                           code=EXIT_NO_DATABASE)
        actor = Actor(id=f"cli:{_user()}", role="ops")
        try:
            report = await handle(ImportPeople(path.name, content, actor, dry_run),
                                  sql_unit_of_work(engine))
        except UnreadablePeopleFile as exc:
            raise CliError(f"{path.name}: not imported: {exc}", code=EXIT_UNUSABLE_INPUT) from None
    finally:
        await engine.dispose()
    click.echo(report.summary() + (" (dry run: nothing written)" if dry_run else ""))
    for problem in report.problems:
        click.echo(f"  {problem.as_dict()['message']}")
    return EXIT_REJECTED_ROWS if report.problems else EXIT_OK


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"
