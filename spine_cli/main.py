"""The `spine` command group: every command, and how a failure ends (one line, an exit code).

Expected failures (a server that does not answer, a missing secret, an unroutable message) end
with `spine: error: <why>` on stderr and a non-zero exit code; `--debug` shows the traceback.
Usage errors exit with 2. Heavy libraries (alembic, FastStream, pydantic) are imported by the
command that uses them, so `--help` and shell completion stay instant.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from spine_cli.broker import broker
from spine_cli.db import db
from spine_cli.dispatch import dispatch
from spine_cli.dlq import dlq
from spine_cli.erp import erp
from spine_cli.errors import CliError, Options
from spine_cli.groups import OrderedGroup
from spine_cli.notification import notification
from spine_cli.orders import publish_raw, submit_order, watch
from spine_cli.timeline import timeline
from spine_cli.tokens import token
from spine_cli.topology import topology

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class SpineGroup(OrderedGroup):
    """The top group: every failure below it ends as one line, `spine: error: ...`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            if isinstance(ctx.obj, Options) and ctx.obj.debug:
                raise
            click.echo(f"spine: error: {exc}", err=True)
            ctx.exit(exc.code)
        except KeyboardInterrupt:
            ctx.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # `spine dlq list | head`: the reader left; say nothing more (and not at exit either).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> int:
        """Run the CLI; exits (or, with `standalone_mode=False`, returns) the exit code."""
        try:
            result = super().main(args, prog_name or self.name, complete_var,
                                  standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)  # usage errors know their command
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            click.echo(f"spine: error: {exc.format_message()}{hint}", err=True)
            code = exc.exit_code
        except click.Abort:
            code = EXIT_INTERRUPTED
        if standalone_mode:
            sys.exit(code)
        return code


@click.group("spine", cls=SpineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Spine operator CLI. Reads SPINE_* from the environment, then from .env.

    Shell completion: eval "$(_SPINE_COMPLETE=bash_source spine)" (or zsh_source, fish_source)
    with `spine` on your PATH.
    """
    ctx.obj = Options(debug=debug)
    if debug:
        logging.basicConfig(level=logging.INFO)


cli.add_command(db)
cli.add_command(topology)
cli.add_command(broker)
cli.add_command(token)
cli.add_command(dlq)
cli.add_command(submit_order)
cli.add_command(publish_raw)
cli.add_command(watch)
cli.add_command(dispatch)
cli.add_command(erp)
cli.add_command(notification)
cli.add_command(timeline)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `./spine` and `python -m spine_cli`; returns the process exit code."""
    return cli.main(argv, prog_name="spine", standalone_mode=False)
