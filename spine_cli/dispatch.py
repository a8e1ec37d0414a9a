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
        answer = _send(lambda: client.post(
            f"/dispatches/{dispatch_id}/transitions",
            json={"to": status, "reason": reason or "", "evidence": evidence},
            headers={"If-Match": version},
        ))
    moved = answer.json()
    if answer.status_code == 202:
        _requested(moved)
        return
    click.echo(f"{moved['id']} is now {moved['status']} (version {moved['version']})")


def _requested(approval: dict[str, Any]) -> None:
    click.echo(f"approval {approval['id']} ({approval['kind']}) waits for a second supervisor: "
               f"spine dispatch approve {approval['id']} --as supervisor --sub <another user>")


@dispatch.command("history")
@click.argument("dispatch_id")
def history(dispatch_id: str) -> None:
    """Every change of a dispatch, from its audit log, oldest first."""
    with _client("ops", None) as client:
        rows = _request(lambda: client.get(f"/dispatches/{dispatch_id}/history"))
    for row in rows:
        click.echo(f"{row['occurred_at']}  {row['actor_id']} ({row['actor_role']})  "
                   f"{row['action']}  {row['from_state'] or '-'} -> {row['to_state'] or '-'}"
                   f"{'  reason: ' + row['reason'] if row['reason'] else ''}"
                   f"  correlation {row['correlation_id']}")


class Change(click.ParamType[dict[str, Any], Any]):
    """`carrier=UPS`, `tracking_number=JD0147` or `line:1=4` (a shipped quantity)."""

    name = "FIELD=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        name, sep, to = str(value).partition("=")
        if not sep or not to:
            self.fail(f"{value!r} is not FIELD=VALUE, e.g. carrier=UPS or line:1=4", param, ctx)
        if name.startswith("line:") and name.removeprefix("line:").isdigit():
            return {"field": "shipped_quantity", "line_no": int(name.removeprefix("line:")),
                    "to": to}
        if name not in ("carrier", "tracking_number"):
            self.fail(f"{name!r} cannot be corrected: use carrier, tracking_number or "
                      "line:<line_no>", param, ctx)
        return {"field": name, "to": to}


def _exception_line(row: dict[str, Any]) -> str:
    owner = row["owner"] + (f" (was {row['escalated_from']})" if row.get("escalated_from") else "")
    return (f"{row['id']}  {row['status']:<12} {row['reason_code']:<16} owner {owner}  due "
            f"{row['due_at']}{'  OVERDUE' if row.get('overdue') else ''}"
            f"{'  blocking' if row['blocking'] else ''}  dispatch {row['dispatch_id']}")


@dispatch.command("exception")
@click.argument("dispatch_id")
@click.option("--as", "as_role", required=True, type=ROLE, help="Act as a user with this role.")
@click.option("--sub", help="User id (default: dev-<role>).")
@click.option("--code", "reason_code", required=True,
              help="stock_shortage, damaged_goods, quality_hold, address_problem, "
                   "customer_request, production_delay or other.")
@click.option("--owner", required=True, help="A user id, or role:<role>.")
@click.option("--due", required=True, help="ISO 8601 date-time with its zone, e.g. 2026-12-02T09:00:00Z.")
@click.option("--blocking/--not-blocking", default=True, show_default=True,
              help="A blocking exception puts the dispatch on hold until it is resolved.")
@click.option("--description", default="", help="What happened.")
def open_exception(dispatch_id: str, as_role: str, sub: str | None, reason_code: str,
                   owner: str, due: str, blocking: bool, description: str) -> None:
    """Open an owned exception on a dispatch (a blocking one holds it)."""
    with _client(as_role, sub) as client:
        row = _request(lambda: client.post(f"/dispatches/{dispatch_id}/exceptions", json={
            "reason_code": reason_code, "owner": owner, "due_at": due, "blocking": blocking,
            "description": description}))
    click.echo(f"exception {row['id']} is {row['status']}; dispatch {dispatch_id} is "
               f"{row['dispatch_status']} (version {row['dispatch_version']})")


@dispatch.command("exceptions")
@click.option("--status", help="open, acknowledged, escalated or resolved.")
@click.option("--owner", help="Only those of this owner (a user id or role:<role>).")
@click.option("--dispatch", "dispatch_id", help="Only those of this dispatch.")
@click.option("--overdue", is_flag=True, help="Only those past their due time, not yet escalated.")
def list_exceptions(status: str | None, owner: str | None, dispatch_id: str | None,
                    overdue: bool) -> None:
    """List exceptions, earliest due first."""
    params: dict[str, Any] = {k: v for k, v in (("status", status), ("owner", owner),
                                                ("dispatch_id", dispatch_id)) if v}
    if overdue:
        params["overdue"] = "true"
    with _client("ops", None) as client:
        rows = _request(lambda: client.get("/exceptions", params=params))
    for row in rows:
        click.echo(_exception_line(row))
    if not rows:
        click.echo("no exceptions match", err=True)


def _exception_step(exception_id: str, step: str, as_role: str, sub: str | None,
                    body: dict[str, Any] | None) -> None:
    with _client(as_role, sub) as client:
        row = _request(lambda: client.post(f"/exceptions/{exception_id}/{step}", json=body))
    click.echo(f"exception {row['id']} is {row['status']}; dispatch {row['dispatch_id']} is "
               f"{row['dispatch_status']} (version {row['dispatch_version']})")


@dispatch.command("acknowledge")
@click.argument("exception_id")
@click.option("--as", "as_role", required=True, type=ROLE, help="Act as a user with this role.")
@click.option("--sub", help="User id (default: dev-<role>); the owner, or a supervisor.")
def acknowledge(exception_id: str, as_role: str, sub: str | None) -> None:
    """Acknowledge an exception (its owner or a supervisor)."""
    _exception_step(exception_id, "acknowledge", as_role, sub, None)


@dispatch.command("resolve")
@click.argument("exception_id")
@click.option("--as", "as_role", required=True, type=ROLE, help="Act as a user with this role.")
@click.option("--sub", help="User id (default: dev-<role>); the owner, or a supervisor.")
@click.option("--resolution", required=True, help="What was done about it.")
def resolve(exception_id: str, as_role: str, sub: str | None, resolution: str) -> None:
    """Resolve an exception; the last blocking one returns its dispatch to where it was."""
    _exception_step(exception_id, "resolve", as_role, sub, {"resolution": resolution})


@dispatch.command("correct")
@click.argument("dispatch_id")
@click.option("--as", "as_role", required=True, type=ROLE, help="Act as a user with this role.")
@click.option("--sub", help="User id (default: dev-<role>).")
@click.option("--set", "changes", multiple=True, required=True, type=Change(),
              help="A correction: carrier=…, tracking_number=… or line:<n>=<shipped qty>; repeat.")
@click.option("--reason", required=True, help="Why the shipped record is wrong.")
def correct(dispatch_id: str, as_role: str, sub: str | None,
            changes: tuple[dict[str, Any], ...], reason: str) -> None:
    """Ask for a correction of a shipped dispatch (a second supervisor approves it)."""
    with _client(as_role, sub) as client:
        _requested(_request(lambda: client.post(f"/dispatches/{dispatch_id}/corrections",
                                                json={"changes": list(changes), "reason": reason})))


@dispatch.command("approvals")
@click.option("--status", help="pending, approved or rejected.")
@click.option("--kind", help="cancel, short_pack or correction.")
@click.option("--dispatch", "dispatch_id", help="Only those of this dispatch.")
def list_approvals(status: str | None, kind: str | None, dispatch_id: str | None) -> None:
    """List approval requests, oldest first."""
    params = {k: v for k, v in (("status", status), ("kind", kind),
                                ("dispatch_id", dispatch_id)) if v}
    with _client("ops", None) as client:
        rows = _request(lambda: client.get("/approvals", params=params))
    for row in rows:
        decided = f"  by {row['decided_by']}" if row["decided_by"] else ""
        click.echo(f"{row['id']}  {row['status']:<8}{decided}  {row['kind']:<10} asked by "
                   f"{row['requested_by']}  dispatch {row['dispatch_id']}")
    if not rows:
        click.echo("no approval requests match", err=True)


def _decide(approval_id: str, verdict: str, sub: str, body: dict[str, Any]) -> None:
    with _client("supervisor", sub) as client:
        row = _request(lambda: client.post(f"/approvals/{approval_id}/{verdict}", json=body))
    click.echo(f"approval {row['id']} ({row['kind']}) {row['status']} by {row['decided_by']}")


@dispatch.command("approve")
@click.argument("approval_id")
@click.option("--sub", required=True, help="The deciding supervisor's user id (not the requester's).")
@click.option("--comment", default="", help="Why it is approved.")
def approve(approval_id: str, sub: str, comment: str) -> None:
    """Approve a request as a supervisor; it is applied at once (409 if the dispatch moved on)."""
    _decide(approval_id, "approve", sub, {"comment": comment})


@dispatch.command("reject")
@click.argument("approval_id")
@click.option("--sub", required=True, help="The deciding supervisor's user id (not the requester's).")
@click.option("--reason", required=True, help="Why it is rejected.")
def reject(approval_id: str, sub: str, reason: str) -> None:
    """Reject a request as a supervisor, saying why."""
    _decide(approval_id, "reject", sub, {"reason": reason})


@dispatch.command("table")
def table() -> None:
    """Print the dispatch workflow tables as the code has them (Markdown).

    The dispatch table (from, to, roles, guards, evidence, approval), then the exception
    lifecycle and the approval decisions: the same data the API's permissions, the audit and
    the tests read.
    """
    from services.dispatch.domain import APPROVALS, EXCEPTIONS, WORKFLOW

    for title, workflow in (("dispatch", WORKFLOW), ("exception", EXCEPTIONS),
                            ("approval", APPROVALS)):
        click.echo(f"\n{title}:\n")
        click.echo("| from | to | roles | guards | evidence | reason | approval |")
        click.echo("|---|---|---|---|---|---|---|")
        for rule in workflow.rules.values():
            approval = rule.approval or "—"
            if rule.approval and rule.approval_when is not None:
                approval += f" (when {rule.approval_when.__doc__})"
            click.echo(f"| {rule.source or '(created)'} | {rule.target} | "
                       f"{', '.join(sorted(rule.roles))} | "
                       f"{'; '.join(g.name for g in rule.guards) or '—'} | "
                       f"{rule.evidence.shape if rule.evidence else '—'} | "
                       f"{'required' if rule.reason_required else '—'} | {approval} |")
    click.echo("\nAn approval is never decided by the person who asked for it (the dispatch "
               "aggregate checks the person; the table, the role). `exception_owner` is whoever "
               "owns the exception in question: its user, a holder of its role:<role>, or its "
               "owner before escalation.")
