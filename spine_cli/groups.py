"""The click group every `spine` command group uses."""

from __future__ import annotations

import click


class OrderedGroup(click.Group):
    """Lists its commands in the order they were added (the order a reader needs), not A-Z."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)
