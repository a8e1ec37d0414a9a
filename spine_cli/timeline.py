"""`spine timeline`: one order's story, merged from what every service recorded about it.

Each service answers its own part at `GET /timeline?order_id=` (oldest first, paged); this
command asks the four at once, merges the parts by time and prints them. The merging and the
formatting are pure functions, tested without servers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from spine_cli.errors import CliError, exit_with
from spine_cli.params import ROLE

if TYPE_CHECKING:
    import httpx

# The order the services are asked and listed in; also the tie-break for entries of one moment.
SERVICES = ("order", "dispatch", "notification", "erp_adapter")
PAGE = 1000  # the most a service's /timeline answers at once
MAX_PAGES = 20  # a story longer than this many pages per service is cut, and said so


@dataclass
class Parts:
    """What the services answered: entries per service, and why the others did not answer."""

    entries: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cut: list[str] = field(default_factory=list)


def from_integration_log(row: Mapping[str, Any]) -> dict[str, Any]:
    """An erp_adapter integration-log row in the shape of the other services' entries.

    The log names no person or role and keeps no trace id: those stay empty rather than made up.
    """
    direction = row.get("direction")
    return {
        "occurred_at": row["occurred_at"], "service": "erp_adapter", "actor_id": None,
        "actor_role": None, "action": f"erp.{'in' if direction == 'in' else 'out'}.{row.get('kind')}",
        "entity_type": row.get("kind"), "entity_id": row.get("record_key"), "from_state": None,
        "to_state": row.get("outcome"), "reason": row.get("last_error") or row.get("detail") or None,
        "correlation_id": row.get("correlation_id"), "trace_id": None,
        "details": {"log_id": row.get("id"), "direction": direction,
                    "connector": row.get("connector"), "attempts": row.get("attempts")},
    }


def merge(parts: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Every service's entries in one list, by time; within one moment, each service's own order.

    `occurred_at` is ISO 8601 in UTC as the services send it (`...Z` or `+00:00`); it is parsed,
    not compared as text, so the two spellings and differing fractions sort alike.
    """
    from datetime import datetime

    rank = {name: i for i, name in enumerate(SERVICES)}
    merged: list[tuple[datetime, int, int, dict[str, Any]]] = []
    for service, entries in parts.items():
        for position, entry in enumerate(entries):
            shaped = from_integration_log(entry) if service == "erp_adapter" else dict(entry)
            shaped.setdefault("service", service)
            at = datetime.fromisoformat(str(shaped["occurred_at"]).replace("Z", "+00:00"))
            merged.append((at, rank.get(service, len(rank)), position, shaped))
    merged.sort(key=lambda item: item[:3])
    return [entry for *_, entry in merged]


def format_table(entries: list[dict[str, Any]]) -> list[str]:
    """The readable lines: time, service, actor (role), action, from → to, reason, trace id."""
    header = ("TIME", "SERVICE", "ACTOR (ROLE)", "ACTION", "FROM → TO", "REASON", "TRACE ID")
    rows = [header]
    for e in entries:
        actor = f"{e['actor_id']} ({e['actor_role']})" if e.get("actor_id") else "-"
        states = (f"{e.get('from_state') or '·'} → {e.get('to_state') or '·'}"
                  if e.get("from_state") or e.get("to_state") else "")
        reason = " ".join(str(e.get("reason") or "").split())  # one line per entry
        rows.append((str(e["occurred_at"]), str(e["service"]), actor, str(e["action"]), states,
                     reason[:60] + ("…" if len(reason) > 60 else ""), e.get("trace_id") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
            for row in rows]


def format_json_lines(entries: list[dict[str, Any]]) -> list[str]:
    """One JSON object per entry, as the services sent it (the erp_adapter's reshaped)."""
    return [json.dumps(e, default=str, ensure_ascii=False) for e in entries]


def _token(role: str) -> str:
    from shared.tokens import JwtVerifier
    from spine_cli.settings import load_settings

    settings = load_settings()
    return JwtVerifier(settings.secret(strict=False), issuer=settings.jwt_issuer,
                       audience=settings.jwt_audience).issue(f"dev-{role}", [role])


def service_urls() -> dict[str, str]:
    """Where each service answers (SPINE_ORDER_URL, SPINE_DISPATCH_URL, ... or the defaults)."""
    from spine_cli.settings import load_settings

    settings = load_settings()
    return {"order": settings.order_url, "dispatch": settings.dispatch_url,
            "notification": settings.notification_url, "erp_adapter": settings.erp_adapter_url}


async def resolve(reference: str, source: str | None, *, url: str, token: str,
                  wait_s: float = 10) -> str:
    """The order id `reference` names: itself if it is one, else the order with that external ref."""
    import httpx

    if source is None:
        try:
            return str(uuid.UUID(reference))
        except ValueError:
            pass
    params: dict[str, str | int] = {"external_ref": reference, "limit": 50}
    if source:
        params["source"] = source
    try:
        async with httpx.AsyncClient(base_url=url, timeout=wait_s) as client:
            answer = await client.get("/orders", params=params,
                                      headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise CliError(f"the order service did not answer ({exc}), so {reference!r} could not be "
                       "looked up; give the order id, or set SPINE_ORDER_URL") from exc
    if not answer.is_success:
        raise CliError(f"the order service answered HTTP {answer.status_code} looking up "
                       f"{reference!r}: {answer.text[:200]}")
    found = answer.json()
    if not found:
        where = f" from {source}" if source else ""
        raise CliError(f"no order{where} has the external reference {reference!r}")
    if len(found) > 1:
        sources = ", ".join(sorted(str(o.get("source")) for o in found))
        raise CliError(f"{len(found)} orders have the external reference {reference!r} (sources: "
                       f"{sources}); name the system with --source")
    return str(found[0]["id"])


async def fetch_parts(order_id: str, urls: Mapping[str, str], *, token: str,
                      wait_s: float = 10) -> Parts:
    """Every service's part, asked concurrently; one that fails is named, the rest kept."""
    import asyncio

    import httpx

    parts = Parts()

    async def ask(service: str, client: httpx.AsyncClient) -> None:
        entries: list[dict[str, Any]] = []
        try:
            for page in range(MAX_PAGES):
                answer = await client.get("/timeline", params={
                    "order_id": order_id, "limit": PAGE, "offset": page * PAGE})
                if not answer.is_success:
                    parts.failures[service] = f"HTTP {answer.status_code}: {answer.text[:200]}"
                    return
                got = answer.json()["entries"]
                entries += got
                if len(got) < PAGE:
                    break
            else:
                parts.cut.append(service)
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            parts.failures[service] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return
        parts.entries[service] = entries

    headers = {"Authorization": f"Bearer {token}"}
    clients = {s: httpx.AsyncClient(base_url=u, headers=headers, timeout=wait_s)
               for s, u in urls.items()}
    try:
        await asyncio.gather(*(ask(s, c) for s, c in clients.items()))
    finally:
        for client in clients.values():
            await client.aclose()
    return parts


async def collect(reference: str, *, source: str | None, role: str,
                  urls: Mapping[str, str] | None = None) -> tuple[str, Parts]:
    """The order id `reference` names and every service's part of its story."""
    token = _token(role)
    urls = urls or service_urls()
    order_id = await resolve(reference, source, url=urls["order"], token=token)
    return order_id, await fetch_parts(order_id, urls, token=token)


@click.command("timeline")
@click.argument("reference", metavar="ORDER")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry instead of a table.")
@click.option("--source", metavar="SYSTEM",
              help="The system that sent the order: ORDER is then its external reference there.")
@click.option("--as", "role", type=ROLE, default="ops", show_default=True,
              help="The role of the development token the services are asked with: ops may "
                   "read every part; a part another role may not read is refused (a warning).")
def timeline(reference: str, as_json: bool, source: str | None, role: str) -> None:
    """One order's story across every service, oldest first.

    ORDER is the order's id, or its external reference (the order service finds the order
    through GET /orders?external_ref=; with --source, the reference in that system). The
    order, dispatch, notification and erp_adapter services are then asked at once for their
    part (GET /timeline?order_id=): audit rows, notification deliveries and integration-log
    rows, merged by time into one table — time, service, actor (role), action, from → to,
    reason and trace id (- where the service kept none). With --json, one object per entry.

    A service that does not answer is named in a warning on stderr and the rest is printed;
    the exit code is then 1 (0 when every service answered). The services are SPINE_ORDER_URL,
    SPINE_DISPATCH_URL, SPINE_NOTIFICATION_URL and SPINE_ERP_ADAPTER_URL (defaults
    http://127.0.0.1:8001 to 8004), asked with a development token signed by SPINE_JWT_SECRET.
    """
    import asyncio

    order_id, parts = asyncio.run(collect(reference, source=source, role=role))
    entries = merge({s: parts.entries[s] for s in SERVICES if s in parts.entries})
    for service in SERVICES:
        if service in parts.failures:
            click.echo(f"spine: warning: the {service} service did not answer "
                       f"({parts.failures[service]}); its part is missing", err=True)
        if service in parts.cut:
            click.echo(f"spine: warning: the {service} service's part is longer than "
                       f"{MAX_PAGES * PAGE} entries; only the first are shown", err=True)
    if as_json:
        for line in format_json_lines(entries):
            click.echo(line)
    else:
        click.echo(f"order {order_id}: {len(entries)} entries from "
                   f"{', '.join(s for s in SERVICES if s in parts.entries) or 'no service'}")
        for line in format_table(entries):
            click.echo(line)
    exit_with(1 if parts.failures else 0)
