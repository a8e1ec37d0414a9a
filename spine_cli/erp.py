"""`spine erp import FILE...`: load ERP exports (customers, products) straight into the erp_adapter.

The command writes through the same handler and unit of work as `POST /imports`, into the
erp_adapter's database. It does not publish: the events wait in the outbox until the
erp_adapter service's relay sends them — at once when the service is running, or when it
starts. That is what lets `make run` load the sample data before any service is up.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from services.erp_adapter.domain import Kind
from spine_cli.errors import CliError, exit_with
from spine_cli.groups import OrderedGroup
from spine_cli.params import POSITIVE_INT

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from services.erp_adapter.ownership import OwnershipRegistry
    from services.erp_adapter.unit_of_work import ErpUnitOfWork
    from shared.contracts.envelope import Actor

EXIT_OK = 0
EXIT_REJECTED_ROWS = 1
EXIT_UNUSABLE_INPUT = 2  # also click's exit code for a usage error
EXIT_NO_DATABASE = 3

EPILOG = """\b
Exit status:
  0  every row of every file was imported (or was unchanged)
  1  some rows were rejected; the good rows were imported
  2  a file could not be read or is not a customer/product export, or bad usage
  3  the erp_adapter database cannot be reached or is not migrated

\b
SPINE_PG_URL and SPINE_DB_PREFIX (or .env) name the database <prefix>_erp.
Events wait in the outbox until the erp_adapter service runs and publishes them.
"""


@click.group("erp", cls=OrderedGroup)
def erp() -> None:
    """The ERP boundary: reference-data import, field ownership, confirmations, reconciliation."""


@erp.command("import", epilog=EPILOG)
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--kind", type=click.Choice([k.value for k in Kind]),
              help="What the files hold (default: detected from the columns).")
@click.option("--dry-run", is_flag=True, help="Check and count against the stored data, write nothing.")
@click.option("--batch-size", type=POSITIVE_INT, metavar="N",
              help="Records per transaction (default: SPINE_IMPORT_BATCH_SIZE or 500).")
def import_(files: tuple[Path, ...], kind: str | None, dry_run: bool, batch_size: int | None) -> None:
    """Import customer or product exports (CSV or JSON).

    Each row is checked on its own: bad rows are listed and skipped, good rows are imported,
    unchanged rows are left alone.
    """
    exit_with(asyncio.run(_import_files(files, Kind(kind) if kind else None, dry_run, batch_size)))


async def _import_files(files: tuple[Path, ...], kind: Kind | None, dry_run: bool,
                        batch_size: int | None) -> int:
    from services.erp_adapter.config import NAME, load_ownership
    from services.erp_adapter.ownership import OwnershipError
    from services.erp_adapter.unit_of_work import sql_unit_of_work
    from shared.contracts.envelope import Actor
    from shared.db.engine import make_engine
    from spine_cli.settings import ErpImportSettings, load_settings

    settings = load_settings(ErpImportSettings)
    batch_size = batch_size or settings.import_batch_size
    engine = make_engine(settings.database_url, pool_size=1, service=f"{NAME}-cli")
    try:
        problem = await _database_problem(engine, settings.database_name)
        if problem:
            raise CliError(problem, code=EXIT_NO_DATABASE)
        uow = sql_unit_of_work(engine)
        try:
            ownership = load_ownership(settings.ownership_file)
        except OwnershipError as exc:
            raise CliError(f"the ownership registry is not usable: {exc.detail}",
                           code=EXIT_UNUSABLE_INPUT) from exc
        actor = Actor(id=f"cli:{_user()}", role="integration")
        status = EXIT_OK
        for path in files:
            code = await _import_file(path, uow, actor=actor, kind=kind, dry_run=dry_run,
                                      batch_size=batch_size, ownership=ownership)
            status = max(status, code)
        if not dry_run:
            waiting = await _unsent_events(engine)
            if waiting:
                click.echo(f"{waiting} event(s) wait in the outbox; the {NAME} service publishes "
                           "them when it runs")
        return status
    finally:
        await engine.dispose()


async def _import_file(
    path: Path, uow: ErpUnitOfWork, *, actor: Actor, kind: Kind | None, dry_run: bool,
    batch_size: int, ownership: OwnershipRegistry,
) -> int:
    from services.erp_adapter import handlers
    from services.erp_adapter.domain import ExportFileError

    try:
        content = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        click.echo(f"{path.name}: cannot read {path}: {exc.strerror or exc}", err=True)
        return EXIT_UNUSABLE_INPUT
    try:
        outcome = await handlers.import_export(
            handlers.ImportExport(filename=path.name, content=content, actor=actor, kind=kind,
                                  dry_run=dry_run),
            uow,
            batch_size=batch_size,
            progress=_progress_printer(path.name, batch_size, sys.stderr),
            ownership=ownership,
        )
    except ExportFileError as exc:
        click.echo(f"{path.name}: not imported: {exc}", err=True)
        return EXIT_UNUSABLE_INPUT
    report = outcome.report
    click.echo(report.summary())
    for rejection in report.rejections:
        click.echo(f"  {rejection}")
    return EXIT_REJECTED_ROWS if report.rejections else EXIT_OK


def _progress_printer(name: str, batch_size: int, out: TextIO) -> Callable[[int, int], None]:
    def show(done: int, total: int) -> None:
        # A file that fits one batch finishes at once; only long ones need a sign of life.
        if total > batch_size:
            print(f"  {name}: {done}/{total} records ({done * 100 // total}%)", file=out, flush=True)

    return show


async def _database_problem(engine: AsyncEngine, database: str) -> str | None:
    """Why the import cannot write to the database, in words that say what to run; else None."""
    import asyncpg
    import sqlalchemy as sa

    try:
        async with engine.connect() as conn:
            migrated = await conn.scalar(sa.text("SELECT to_regclass('public.import_run')"))
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"database {database} does not exist: create and migrate it (make migrate)"
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            # The runtime role is created with its database: neither exists yet.
            return (f"database {database} does not exist, or has no runtime role: create and "
                    f"migrate it (make migrate): {cause}")
        return f"cannot connect to database {database}: {cause.__class__.__name__}: {cause}"
    if migrated is None:
        return f"database {database} is not migrated: migrate it (make migrate)"
    return None


async def _unsent_events(engine: AsyncEngine) -> int:
    import sqlalchemy as sa

    async with engine.connect() as conn:
        count = await conn.scalar(sa.text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
    return int(count or 0)


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in some containers
        return "unknown"


@erp.command("ownership")
@click.option("--markdown", "as_markdown", is_flag=True,
              help="Print the table the README embeds (a unit test keeps the two equal).")
@click.option("--file", "path", type=click.Path(path_type=Path, dir_okay=False),
              help="A registry file to check (default: SPINE_OWNERSHIP_FILE or the bundled one).")
def ownership(as_markdown: bool, path: Path | None) -> None:
    """Check and print the field-ownership registry: entity × field → owning system.

    Exits 2, naming every bad entry, when the registry would stop the erp_adapter's start.
    """
    from services.erp_adapter.config import load_ownership
    from services.erp_adapter.ownership import OwnershipError
    from spine_cli.settings import ErpImportSettings, load_settings

    try:
        found = load_ownership(path or load_settings(ErpImportSettings).ownership_file)
    except OwnershipError as exc:
        for line in exc.problems:
            click.echo(line, err=True)
        exit_with(EXIT_UNUSABLE_INPUT)
    if as_markdown:
        click.echo(found.as_markdown(), nl=False)
        return
    import json

    click.echo(json.dumps(found.as_dict(), indent=2))


@erp.command("reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reconcile(as_json: bool) -> None:
    """Compare what Spine shipped with what the ERP acknowledged, field by field.

    Reads the erp_adapter's database. Exits 0 when every shipped dispatch is acknowledged with
    the same values, 1 when something is missing on either side or differs, 3 when the
    database cannot be read.
    """
    exit_with(asyncio.run(_reconcile(as_json)))


async def _reconcile(as_json: bool) -> int:
    import json
    from dataclasses import asdict

    from services.erp_adapter.config import NAME
    from services.erp_adapter.views import reconciliation
    from shared.db.engine import make_engine
    from spine_cli.settings import ErpImportSettings, load_settings

    settings = load_settings(ErpImportSettings)
    engine = make_engine(settings.database_url, pool_size=1, service=f"{NAME}-cli")
    try:
        problem = await _database_problem(engine, settings.database_name)
        if problem:
            raise CliError(problem, code=EXIT_NO_DATABASE)
        report = await reconciliation(engine)
    finally:
        await engine.dispose()
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
    else:
        for f in report.findings:
            click.echo(f"{f.finding}: dispatch {f.dispatch_id or '?'} (order "
                       f"{f.order_id or '?'}): {f.detail}")
            for d in f.differences:
                click.echo(f"    {d.field}: Spine {d.spine!r}, ERP {d.erp!r}")
        click.echo(f"{report.shipped} shipped, {report.acknowledged} acknowledged by the ERP, "
                   f"{report.in_agreement} in agreement, {len(report.findings)} finding(s)")
    return EXIT_OK if not report.findings else EXIT_REJECTED_ROWS
