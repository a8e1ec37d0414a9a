"""`spine dispatch list|move|history`: the dispatch API, as a development user of a role."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from spine_cli.errors import CliError
from spine_cli.groups import OrderedGroup
from spine_cli.params import ROLE

if TYPE_CHECKING:
    import httpx


class PackedLine(click.ParamType[dict[str, Any], Any]):
    """`LINE_NO=QUANTITY`, the packed quantity of one order line."""

    name = "LINE_NO=QTY"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        line_no, sep, quantity = str(value).partition("=")
        if not sep or not line_no.isdigit() or not quantity:
            self.fail(f"{value!r} is not LINE_NO=QUANTITY, e.g. 1=4", param, ctx)
        return {"line_no": int(line_no), "quantity": quantity}


def _client(role: str, sub: str | None) -> httpx.Client:
    """An HTTP client of the dispatch API, acting as a development user with `role`."""
    import httpx

    from shared.tokens import JwtVerifier
    from spine_cli.settings import load_settings

    settings = load_settings()
    token = JwtVerifier(settings.secret(strict=False), issuer=settings.jwt_issuer,
                        audience=settings.jwt_audience).issue(sub or f"dev-{role}", [role])
    return httpx.Client(base_url=settings.dispatch_url, headers={"Authorization": f"Bearer {token}"},
                        timeout=10)


def _send(call: Callable[[], httpx.Response]) -> httpx.Response:
    """The 2xx answer of one call; otherwise a one-line error with the service's reason."""
    import httpx

    try:
        response = call()
    except httpx.HTTPError as exc:
        raise CliError(f"the dispatch service did not answer ({exc}); is `make run` running? "
                       "(set SPINE_DISPATCH_URL to reach another one)") from exc
    if response.is_success:
        return response
    try:
        body = response.json()
        detail = body.get("detail", body)
        problems = body.get("problems")
    except ValueError:
        detail, problems = response.text, None
    extra = f" ({'; '.join(problems)})" if problems and "; ".join(problems) != detail else ""
    raise CliError(f"HTTP {response.status_code}: {detail}{extra}")


def _request(call: Callable[[], httpx.Response]) -> Any:
    """The JSON body of the 2xx answer of one call."""
    return _send(call).json()


@click.group("dispatch", cls=OrderedGroup)
def dispatch() -> None:
    """List, move and inspect dispatches through the dispatch API.

    The API is SPINE_DISPATCH_URL (default http://127.0.0.1:8002); each command acts as a
    development user of a role, with a token signed by SPINE_JWT_SECRET.
    """


@dispatch.command("list")
@click.option("--order", help="Only the dispatch of this order id.")
@click.option("--status", help="Only dispatches in this status.")
def list_(order: str | None, status: str | None) -> None:
    """List dispatches, newest first."""
    params = {k: v for k, v in (("order_id", order), ("status", status)) if v}
    with _client("ops", None) as client:
        rows = _request(lambda: client.get("/dispatches", params=params))
    for row in rows:
        click.echo(f"{row['id']}  {row['status']:<9} v{row['version']:<3} order {row['order_id']}"
                   f"  ({row.get('source') or '-'} {row.get('external_ref') or ''})")
    if not rows:
        click.echo("no dispatches match", err=True)


@dispatch.command("move")
@click.argument("dispatch_id")
@click.argument("status")
@click.option("--as", "as_role", required=True, type=ROLE, help="Act as a user with this role, e.g. planner.")
@click.option("--sub", help="User id (default: dev-<role>).")
@click.option("--reason", help="Why (required for on_hold and cancelled).")
@click.option("--line", "lines", multiple=True, type=PackedLine(),
              help="Packed quantity of a line (for packed); repeat for every line.")
@click.option("--carrier", help="For shipped.")
@click.option("--tracking", help="Tracking number, for shipped.")
@click.option("--hold-code", help="Reason code, for on_hold.")
@click.option("--owner", help="Who owns the follow-up, for on_hold.")
@click.option("--due", help="ISO 8601 due date-time, for on_hold.")
def move(dispatch_id: str, status: str, as_role: str, sub: str | None, reason: str | None,
         lines: tuple[dict[str, Any], ...], carrier: str | None, tracking: str | None,
         hold_code: str | None, owner: str | None, due: str | None) -> None:
    """Move a dispatch to a new status, as a user with a role.

    STATUS is released, picking, packed, shipped, on_hold, cancelled, ... The command reads
    the dispatch's version (ETag) first and sends it as If-Match.
    """
    evidence: dict[str, Any] = {}
    if lines:
        evidence["lines"] = list(lines)
    if carrier or tracking:
        evidence.update(carrier=carrier or "", tracking_number=tracking or "")
    if hold_code or owner or due:
        evidence.update(reason_code=hold_code or "", owner=owner or "", due_at=due or "")
    with _client(as_role, sub) as client:
        version = _send(lambda: client.get(f"/dispatches/{dispatch_id}")).headers.get("etag", "")
        moved = _request(lambda: client.post(
            f"/dispatches/{dispatch_id}/transitions",
            json={"to": status, "reason": reason or "", "evidence": evidence},
            headers={"If-Match": version},
        ))
    click.echo(f"{moved['id']} is now {moved['status']} (version {moved['version']})")


@dispatch.command("history")
@click.argument("dispatch_id")
def history(dispatch_id: str) -> None:
    """Every change of a dispatch, from its audit log, oldest first."""
    with _client("ops", None) as client:
        rows = _request(lambda: client.get(f"/dispatches/{dispatch_id}/history"))
    for row in rows:
        click.echo(f"{row['occurred_at']}  {row['actor_id']} ({row['actor_role']})  "
                   f"{row['from_state'] or '-'} -> {row['to_state'] or '-'}"
                   f"{'  reason: ' + row['reason'] if row['reason'] else ''}"
                   f"  correlation {row['correlation_id']}")
