"""`python -m services.erp_adapter.cli import FILE ...`: import ERP exports from the command line.

The command writes through the same handler and unit of work as `POST /imports`, straight into
the erp_adapter's database. It does not publish: the events wait in the outbox until the
erp_adapter service's relay sends them — at once when the service is running, or when it
starts. That is what lets `make run` load the sample data before any service is up.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from services.erp_adapter import handlers
from services.erp_adapter.config import NAME, ImportSettings
from services.erp_adapter.domain import ExportFileError, Kind
from services.erp_adapter.unit_of_work import sql_unit_of_work
from shared.contracts.envelope import Actor
from shared.db.engine import make_engine
from shared.uow import UnitOfWork

EXIT_OK = 0
EXIT_REJECTED_ROWS = 1
EXIT_UNUSABLE_INPUT = 2  # also argparse's exit code for a usage error
EXIT_NO_DATABASE = 3

EPILOG = """\
exit status:
  0  every row of every file was imported (or was unchanged)
  1  some rows were rejected; the good rows were imported
  2  a file could not be read or is not a customer/product export, or bad usage
  3  the erp_adapter database cannot be reached or is not migrated

environment: SPINE_PG_URL and SPINE_DB_PREFIX (or .env) name the database <prefix>_erp.
Events wait in the outbox until the erp_adapter service runs and publishes them.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.erp_adapter.cli",
        description="Import ERP reference data (customers, products) into Spine.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    imp = commands.add_parser(
        "import",
        help="import one or more export files (CSV or JSON)",
        description="Import customer or product exports. Each row is checked on its own: bad "
        "rows are listed and skipped, good rows are imported, unchanged rows are left alone.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("files", nargs="+", type=Path, metavar="FILE", help="CSV or JSON export")
    imp.add_argument("--kind", choices=[k.value for k in Kind],
                     help="what the files hold (default: detected from the columns)")
    imp.add_argument("--dry-run", action="store_true",
                     help="check and count against the stored data, write nothing")
    imp.add_argument("--batch-size", type=int, metavar="N",
                     help="records per transaction (default: SPINE_IMPORT_BATCH_SIZE or 500)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        print("--batch-size must be at least 1", file=sys.stderr)
        return EXIT_UNUSABLE_INPUT
    return asyncio.run(_import_files(args))


async def _import_files(args: argparse.Namespace) -> int:
    settings = ImportSettings()
    batch_size = args.batch_size or settings.import_batch_size
    kind = Kind(args.kind) if args.kind else None
    engine = make_engine(settings.database_url, pool_size=1, service=f"{NAME}-cli")
    try:
        problem = await _database_problem(engine, settings.database_name)
        if problem:
            print(problem, file=sys.stderr)
            return EXIT_NO_DATABASE
        uow = sql_unit_of_work(engine)
        actor = Actor(id=f"cli:{_user()}", role="integration")
        status = EXIT_OK
        for path in args.files:
            code = await _import_file(path, uow, actor=actor, kind=kind, dry_run=args.dry_run,
                                      batch_size=batch_size)
            status = max(status, code)
        if not args.dry_run:
            waiting = await _unsent_events(engine)
            if waiting:
                print(f"{waiting} event(s) wait in the outbox; the {NAME} service publishes "
                      "them when it runs")
        return status
    finally:
        await engine.dispose()


async def _import_file(
    path: Path, uow: UnitOfWork, *, actor: Actor, kind: Kind | None, dry_run: bool,
    batch_size: int,
) -> int:
    try:
        content = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        print(f"{path.name}: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE_INPUT
    try:
        outcome = await handlers.import_export(
            handlers.ImportExport(filename=path.name, content=content, actor=actor, kind=kind,
                                  dry_run=dry_run),
            uow,
            batch_size=batch_size,
            progress=_progress_printer(path.name, batch_size, sys.stderr),
        )
    except ExportFileError as exc:
        print(f"{path.name}: not imported: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE_INPUT
    report = outcome.report
    print(report.summary())
    for rejection in report.rejections:
        print(f"  {rejection}")
    return EXIT_REJECTED_ROWS if report.rejections else EXIT_OK


def _progress_printer(name: str, batch_size: int, out: TextIO) -> handlers.Progress:
    def show(done: int, total: int) -> None:
        # A file that fits one batch finishes at once; only long ones need a sign of life.
        if total > batch_size:
            print(f"  {name}: {done}/{total} records ({done * 100 // total}%)", file=out,
                  flush=True)

    return show


async def _database_problem(engine: AsyncEngine, database: str) -> str | None:
    """Why the import cannot write to the database, in words that say what to run; else None."""
    try:
        async with engine.connect() as conn:
            migrated = await conn.scalar(sa.text("SELECT to_regclass('public.import_run')"))
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"database {database} does not exist: create and migrate it (make migrate)"
        return f"cannot connect to database {database}: {cause.__class__.__name__}: {cause}"
    if migrated is None:
        return f"database {database} is not migrated: migrate it (make migrate)"
    return None


async def _unsent_events(engine: AsyncEngine) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
