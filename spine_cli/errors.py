"""How commands fail: one readable line on stderr and an exit code, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass

import click


class CliError(Exception):
    """An expected failure: printed as `spine: error: <message>`, no traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Options:
    """Options of the `spine` group itself, for its commands to read."""

    debug: bool = False


def debugging() -> bool:
    """Whether `--debug` was given: then failures show their traceback."""
    ctx = click.get_current_context(silent=True)
    options = ctx.find_object(Options) if ctx else None
    return bool(options and options.debug)


def exit_with(code: int) -> None:
    """End the command with `code` (0 returns normally, so the caller carries on)."""
    if code:
        click.get_current_context().exit(code)
