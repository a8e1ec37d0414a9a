"""`spine token`: a development JWT (HS256) for curl and the API docs."""

from __future__ import annotations

import sys

import click

from spine_cli.params import POSITIVE_FLOAT, ROLE


@click.command("token")
@click.option("--role", "roles", multiple=True, required=True, type=ROLE,
              help="A role to grant; repeat for several.")
@click.option("--sub", help="Subject (default: dev-<first role>).")
@click.option("--ttl-hours", type=POSITIVE_FLOAT, metavar="HOURS", default=8.0, show_default=True,
              help="Lifetime in hours.")
def token(roles: tuple[str, ...], sub: str | None, ttl_hours: float) -> None:
    """Print a development JWT (HS256).

    It is signed with SPINE_JWT_SECRET, as the services expect; for curl and the API docs.
    """
    from shared.tokens import JwtVerifier
    from spine_cli.settings import load_settings

    settings = load_settings()
    secret = settings.secret(strict=True)
    granted = list(dict.fromkeys(roles))
    sub = sub or f"dev-{granted[0]}"
    verifier = JwtVerifier(secret, issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    click.echo(verifier.issue(sub, granted, ttl_s=int(ttl_hours * 3600)))
    if sys.stdout.isatty():
        click.echo(f"# sub={sub} roles={','.join(granted)}, valid {ttl_hours:g} h", err=True)
