"""`spine broker definitions|apply|remove`: the broker's users and rights, from the registry."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import click

from spine_cli.errors import CliError
from spine_cli.groups import OrderedGroup

DEFINITIONS_FILE = Path(__file__).resolve().parents[1] / "deploy" / "rabbitmq" / "definitions.json"

_vhost = click.option("--vhost", default="/", show_default=True, help="The virtual host.")
_namespace = click.option("--namespace", default="spine", show_default=True,
                          help="Prefix of the exchanges and queues (SPINE_NAMESPACE).")
_systems = click.option("--system", "systems", multiple=True, metavar="NAME",
                        help="An outside plant system that publishes ext.NAME.* (repeatable).")
_user_prefix = click.option("--user-prefix", default="", metavar="P",
                            help="Prefix of every user name (users are per broker, not per vhost).")


def render(document: dict[str, Any]) -> str:
    """The definitions as they are written to a file."""
    return json.dumps(document, indent=2) + "\n"


@click.group("broker", cls=OrderedGroup)
def broker() -> None:
    """Broker users and permissions (one user per service and outside system)."""


@broker.command("definitions")
@_vhost
@_namespace
@_systems
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write them to this file instead of printing them.")
@click.option("--check", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Exit 1 if this file differs from what would be generated.")
def definitions_(vhost: str, namespace: str, systems: tuple[str, ...], out: Path | None,
                 check: Path | None) -> None:
    """Print RabbitMQ definitions with development passwords (<user>-dev), as deploy/ has them."""
    from shared.messaging.permissions import definitions

    text = render(_definitions(definitions, vhost=vhost, namespace=namespace, systems=systems))
    if check is not None:
        if check.read_text() != text:
            raise CliError(f"{check} differs from the registry's definitions; regenerate it with "
                           f"`./spine broker definitions --system mes --out {check}`")
        click.echo(f"{check} matches the registry")
    elif out is not None:
        out.write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(text, nl=False)


@broker.command("apply")
@_vhost
@_namespace
@_systems
@_user_prefix
@click.option("--passwords", "passwords_file", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="JSON file of user → password; users missing from it get a "
              "fresh one, written back to it (mode 600).")
@click.option("--rabbitmqctl", default="rabbitmqctl", show_default=True, help="Its path.")
def apply(vhost: str, namespace: str, systems: tuple[str, ...], user_prefix: str,
          passwords_file: Path, rabbitmqctl: str) -> None:
    """Create the vhost, the users and their rights on the broker (rabbitmqctl import_definitions)."""
    from shared.messaging.permissions import broker_users, definitions

    passwords: dict[str, str] = {}
    if passwords_file.exists():
        try:
            passwords = json.loads(passwords_file.read_text())
        except json.JSONDecodeError as exc:
            raise CliError(f"{passwords_file} is not JSON: {exc}") from exc
    users = _users(broker_users, systems, user_prefix)
    fresh = {user: secrets.token_urlsafe(24) for user in users if user not in passwords}
    if fresh:
        passwords.update(fresh)
        passwords_file.touch(mode=0o600)
        os.chmod(passwords_file, 0o600)
        passwords_file.write_text(json.dumps(passwords, indent=2) + "\n")
    document = _definitions(definitions, vhost=vhost, namespace=namespace, systems=systems,
                            user_prefix=user_prefix, passwords=passwords)
    _ctl(rabbitmqctl, "import_definitions", "--format", "json", stdin=render(document))
    click.echo(f"applied {len(users)} user(s) to vhost {vhost}: {', '.join(users)}")
    click.echo(f"SPINE_BROKER_USERS={json.dumps(users, separators=(',', ':'))}")


@broker.command("remove")
@_vhost
@_systems
@_user_prefix
@click.option("--rabbitmqctl", default="rabbitmqctl", show_default=True, help="Its path.")
def remove(vhost: str, systems: tuple[str, ...], user_prefix: str, rabbitmqctl: str) -> None:
    """Delete the users `apply` created and the vhost (with everything in it)."""
    from shared.messaging.permissions import broker_users

    users = _users(broker_users, systems, user_prefix)
    for user in users:
        _ctl(rabbitmqctl, "delete_user", user, missing_ok=True)
    if vhost != "/":
        _ctl(rabbitmqctl, "delete_vhost", vhost, missing_ok=True)
    click.echo(f"removed {len(users)} user(s)" + (f" and vhost {vhost}" if vhost != "/" else ""))


def _users(broker_users: Any, systems: tuple[str, ...], user_prefix: str) -> dict[str, str]:
    try:
        users: dict[str, str] = broker_users(systems, user_prefix=user_prefix)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    return users


def _definitions(definitions: Any, **options: Any) -> dict[str, Any]:
    try:
        document: dict[str, Any] = definitions(**options)
    except ValueError as exc:
        raise CliError(str(exc), code=2) from exc
    return document


def _ctl(rabbitmqctl: str, *args: str, stdin: str | None = None, missing_ok: bool = False) -> None:
    if shutil.which(rabbitmqctl) is None:
        raise CliError(f"{rabbitmqctl} not found; run this where the broker runs (as root or "
                       "the rabbitmq user), or pass --rabbitmqctl")
    ran = subprocess.run([rabbitmqctl, "--quiet", *args], input=stdin, capture_output=True,  # nosec B603 # the operator's rabbitmqctl, no shell
                         text=True, timeout=120, check=False)
    if ran.returncode != 0:
        text = (ran.stderr or ran.stdout).strip()
        if missing_ok and ("does not exist" in text or "not_found" in text
                           or "no_such" in text):
            return
        raise CliError(f"rabbitmqctl {args[0]} failed: {text.splitlines()[-1] if text else ran.returncode}")


@broker.command("check")
@click.option("--url", envvar="SPINE_AMQP_URL", default="amqp://guest:guest@127.0.0.1:5672/",
              show_default="SPINE_AMQP_URL or the local broker", help="The broker to check.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1, 600), default=20.0,
              show_default=True, help="Seconds the whole round trip may take.")
def check(url: str, timeout_s: float) -> None:
    """Exit 0 if the broker declares a quorum queue, confirms a message and hands it back in time.

    A node that accepts logins while its quorum queues are wedged fails this (exit 1, naming the
    step that hung); a plain port or login check would call it healthy.
    """
    import asyncio

    from shared.messaging.health import quorum_round_trip

    problem = asyncio.run(quorum_round_trip(url, timeout_s))
    if problem is not None:
        raise CliError(f"the broker failed a quorum-queue round trip: {problem}")
    click.echo("the broker completed a quorum-queue round trip")
