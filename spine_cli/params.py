"""Option types shared by several commands; each fails with a message a person can act on."""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem


def _roles() -> tuple[str, ...]:
    # Imported only when a role is checked, so `--help` and completion stay instant.
    from shared.domain import ROLES

    return ROLES


class Role(click.ParamType[str, Any]):
    """A role the services know (`shared.tokens.ROLES`)."""

    name = "ROLE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        roles = _roles()
        if value not in roles:
            self.fail(f"unknown role {value!r}; known roles: {', '.join(roles)}", param, ctx)
        return str(value)

    def shell_complete(
        self, ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(role) for role in _roles() if role.startswith(incomplete)]


ROLE = Role()
POSITIVE_INT = click.IntRange(min=1)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
