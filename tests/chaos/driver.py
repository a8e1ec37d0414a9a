"""The load driver: orders at a steady rate, by AMQP intake and by HTTP, and what became of each.

Each operation is what a plant system or a person at a screen would do, including the retries
they would make: an outside system resends the same message (same `message_id`) until the
broker confirms it, and sometimes sends the same order again under a new message id; an HTTP
client retries `POST /orders` with the same `Idempotency-Key` after a dropped connection or a
5xx, then confirms. Some accepted orders' dispatches are then walked on, over HTTP, to `picking` (a planner
releases it, the warehouse starts picking), with `If-Match` and the same retries; a retry
refused as stale is looked up, since the first try may have been the one that went through.
The history records, for every operation, whether it ended `ok` (the
system said yes), `failed` (the system said no) or `indeterminate` (it never answered) — the
checker judges the databases against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import aio_pika
import httpx

from shared.contracts.envelope import Actor, new_envelope
from shared.messaging.permissions import broker_user
from shared.stack import ROOT
from shared.tokens import JwtVerifier

Outcome = Literal["ok", "failed", "indeterminate"]
SYSTEM = "chaos"  # the outside system the AMQP orders come from: `ext.chaos.order.submitted`
GIVE_UP_S = 90.0  # how long one operation keeps retrying before it is left indeterminate


@dataclass
class Operation:
    """One submission and its outcome, with the ids the checker recognises it by."""

    n: int
    channel: Literal["amqp", "http"]
    external_ref: str  # also the Idempotency-Key of an HTTP submission
    outcome: Outcome = "indeterminate"
    detail: str = ""
    attempts: int = 0
    retries: int = 0  # requests and publishes sent again after no answer, a 5xx or a drop
    message_ids: list[str] = field(default_factory=list)  # every envelope sent (AMQP)
    order_id: str | None = None  # as the HTTP answer named it
    resent: bool = False  # AMQP: sent again under a new message id, as a confused system would
    walk: Outcome | None = None  # its dispatch moved on to `picking` by people over HTTP
    dispatch_id: str | None = None
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def source(self) -> str | None:
        """The order's `source` column: the outside system, or NULL for an order typed in."""
        return SYSTEM if self.channel == "amqp" else None


@dataclass
class History:
    seed: int
    operations: list[Operation] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.operations:
            key = f"{op.channel} {op.outcome if op.ended_at else 'in flight'}"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def dump(self, path: Path) -> None:
        with path.open("w") as out:
            for op in self.operations:
                out.write(json.dumps(asdict(op)) + "\n")


def catalogue() -> tuple[list[str], list[tuple[str, str]]]:
    """Active customer ids and active (product id, uom) pairs of the sample ERP export."""
    with open(ROOT / "samples/erp/customers.csv", newline="") as fh:
        customers = [r["customer_id"] for r in csv.DictReader(fh)
                     if r.get("active", "true").strip().lower() in ("true", "1", "yes", "")]
    raw = json.loads((ROOT / "samples/erp/products.json").read_text())
    products = raw["products"] if isinstance(raw, dict) else raw
    active = [(p["product_id"], p["uom"]) for p in products if p.get("active", True) in (True, "true", 1)]
    return customers, active


class LoadDriver:
    """Submits `orders` orders at `rate` a second; `history` holds the outcome of each."""

    def __init__(self, *, amqp_url: str, namespace: str, order_url: str, dispatch_url: str,
                 secret: str, orders: int, rate: float, seed: int, http_share: float = 0.3,
                 resend_share: float = 0.05, walk_share: float = 0.2,
                 concurrency: int = 64) -> None:
        self.amqp_url = amqp_url
        self.namespace = namespace
        self.order_url = order_url
        self.dispatch_url = dispatch_url
        self.walk_share = walk_share
        self.orders = orders
        self.rate = rate
        self.rng = random.Random(seed)  # the plan: which channel, which order resent
        self._jitter = random.Random(seed + 1)  # retry pauses, drawn in whatever order tasks run
        self.http_share = http_share
        self.resend_share = resend_share
        self.history = History(seed)
        self.run_id = f"{seed:x}-{uuid.uuid4().hex[:6]}"
        verifier = JwtVerifier(secret)
        self._token = verifier.issue("chaos-sales", ["sales"])
        self._tokens = {"released": verifier.issue("chaos-planner", ["planner"]),
                        "picking": verifier.issue("chaos-warehouse", ["warehouse"])}
        self._slots = asyncio.Semaphore(concurrency)
        self._customers, self._products = catalogue()

    async def run(self, progress: Any = None) -> History:
        """Start one operation every 1/rate seconds; return when every one has ended."""
        connection = await aio_pika.connect_robust(self.amqp_url, timeout=10)
        try:
            async with httpx.AsyncClient(base_url=self.order_url, timeout=10.0) as client:
                tasks = []
                start = time.monotonic()
                for n in range(self.orders):
                    op = self._plan(n)
                    self.history.operations.append(op)
                    await self._slots.acquire()
                    tasks.append(asyncio.create_task(self._perform(op, connection, client)))
                    if progress is not None and n and n % 500 == 0:
                        progress(f"submitted {n}/{self.orders}: {self.history.counts()}")
                    # A steady rate against the clock: a slow moment is not made up by a burst.
                    await asyncio.sleep(max(0.0, start + (n + 1) / self.rate - time.monotonic()))
                await asyncio.gather(*tasks)
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
        return self.history

    # ---------------------------------------------------------------------------- planning
    def _plan(self, n: int) -> Operation:
        channel: Literal["amqp", "http"] = "http" if self.rng.random() < self.http_share else "amqp"
        op = Operation(n=n, channel=channel, external_ref=f"CH-{self.run_id}-{n:06d}")
        op.resent = channel == "amqp" and self.rng.random() < self.resend_share
        op.walk = "indeterminate" if self.rng.random() < self.walk_share else None
        return op

    def _order(self, op: Operation) -> dict[str, Any]:
        rng = random.Random(f"{self.history.seed}:{op.n}")  # each order replays from the seed
        products = rng.sample(self._products, k=min(len(self._products), rng.randint(1, 3)))
        return {
            "external_ref": op.external_ref,
            "customer_id": rng.choice(self._customers),
            "requested_ship_date": "2027-01-15",
            "priority": rng.choice(["normal", "rush"]),
            "ship_to": {"name": "Chaos Receiving", "street": f"{op.n} Dock Road", "city": "Linz",
                        "postal_code": "4020", "country": "AT"},
            "lines": [{"line_no": i + 1, "product_id": pid,
                       "quantity": str(rng.randint(1, 40)), "uom": uom}
                      for i, (pid, uom) in enumerate(products)],
        }

    # ---------------------------------------------------------------------------- doing
    async def _perform(self, op: Operation, connection: aio_pika.abc.AbstractRobustConnection,
                       client: httpx.AsyncClient) -> None:
        op.started_at = time.time()
        try:
            if op.channel == "amqp":
                await self._submit_amqp(op, connection)
            else:
                await self._submit_http(op, client)
            if op.walk is not None:
                if op.outcome == "ok":
                    await self._walk(op, client)
                else:
                    op.walk = None
        except Exception as exc:  # a bug in the driver must show in the history, not vanish
            op.outcome, op.detail = "indeterminate", f"driver: {exc!r}"
        finally:
            op.ended_at = time.time()
            self._slots.release()

    async def _submit_amqp(self, op: Operation, connection: aio_pika.abc.AbstractRobustConnection) -> None:
        data = {**self._order(op), "confirmed": True}
        outcome = await self._publish_until_confirmed(op, data, connection)
        if outcome == "ok" and op.resent:
            # The same order again under a new message id: external_ref must keep it one order.
            outcome = await self._publish_until_confirmed(op, data, connection)
        op.outcome = outcome

    async def _publish_until_confirmed(self, op: Operation, data: dict[str, Any],
                                       connection: aio_pika.abc.AbstractRobustConnection) -> Outcome:
        envelope = new_envelope(type=f"ext.{SYSTEM}.order.submitted", producer=SYSTEM, data=data,
                                actor=Actor(id=SYSTEM, role="integration"))
        op.message_ids.append(str(envelope["event_id"]))
        message = aio_pika.Message(
            json.dumps(envelope).encode(), message_id=str(envelope["event_id"]),
            correlation_id=str(envelope["correlation_id"]), content_type="application/json",
            user_id=broker_user(self.amqp_url), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            op.attempts += 1
            try:
                channel = await asyncio.wait_for(
                    connection.channel(publisher_confirms=True, on_return_raises=True), 10)
                try:
                    exchange = await channel.get_exchange(f"{self.namespace}.events", ensure=False)
                    await exchange.publish(message, routing_key=envelope["type"], mandatory=True,
                                           timeout=10)
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
                return "ok"
            except Exception as exc:  # connection lost, nack, timeout: unknown, so resend
                op.retries += 1
                op.detail = f"{exc.__class__.__name__}: {exc}"[:300]
                await asyncio.sleep(0.5 + self._jitter.random())
        return "indeterminate"

    async def _submit_http(self, op: Operation, client: httpx.AsyncClient) -> None:
        headers = {"Authorization": f"Bearer {self._token}", "Idempotency-Key": op.external_ref}
        created = await self._call(op, client, "POST", "/orders", json=self._order(op),
                                   headers=headers)
        if created is None:
            op.outcome = "indeterminate"
            return
        if created.status_code != 201:
            op.outcome, op.detail = "failed", f"POST /orders: {created.status_code} {created.text[:200]}"
            return
        op.order_id = created.json()["id"]
        confirmed = await self._call(op, client, "POST", f"/orders/{op.order_id}/confirm",
                                     headers={"Authorization": f"Bearer {self._token}"})
        if confirmed is None:
            op.outcome = "indeterminate"
            return
        if confirmed.status_code == 200:
            op.outcome = "ok"
            return
        # A retried confirm after a lost answer is refused (already confirmed): look it up.
        seen = await self._call(op, client, "GET", f"/orders/{op.order_id}",
                                headers={"Authorization": f"Bearer {self._token}"})
        if seen is not None and seen.status_code == 200 and seen.json()["status"] == "confirmed":
            op.outcome = "ok"
        else:
            op.outcome = "failed"
            op.detail = f"confirm: {confirmed.status_code} {confirmed.text[:200]}"

    async def _call(self, op: Operation, client: httpx.AsyncClient, method: str, path: str,
                    **kwargs: Any) -> httpx.Response | None:
        """The answer to one request, retried after a transport error or a 5xx; None: gave up."""
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            op.attempts += 1
            try:
                response = await client.request(method, path, **kwargs)
            except httpx.HTTPError as exc:
                op.detail = f"{method} {path}: {exc.__class__.__name__}: {exc}"[:300]
            else:
                if response.status_code < 500:
                    return response
                op.detail = f"{method} {path}: {response.status_code} {response.text[:200]}"
            op.retries += 1
            await asyncio.sleep(0.5 + self._jitter.random())
        return None

    async def _walk(self, op: Operation, client: httpx.AsyncClient) -> None:
        """pending → released → picking, as a planner and then the warehouse would."""
        dispatch = await self._dispatch_of(op, client)
        if dispatch is None:
            op.detail = f"walk: no dispatch to walk ({op.detail})"
            return
        op.dispatch_id, version = dispatch["id"], dispatch["version"]
        for target in ("released", "picking"):
            auth = {"Authorization": f"Bearer {self._tokens[target]}"}
            path = f"{self.dispatch_url}/dispatches/{op.dispatch_id}"
            moved = await self._call(op, client, "POST", f"{path}/transitions", json={"to": target},
                                     headers={**auth, "If-Match": f'"{version}"'})
            if moved is None:
                return  # indeterminate
            if moved.status_code == 200:
                version = moved.json()["version"]
                continue
            # Stale or not allowed: after a lost answer, the first try may have moved it already.
            seen = await self._call(op, client, "GET", path, headers=auth)
            if seen is None:
                return
            if seen.status_code != 200 or seen.json()["status"] != target:
                op.walk, op.detail = "failed", f"walk to {target}: {moved.status_code} {moved.text[:200]}"
                return
            version = seen.json()["version"]
        op.walk = "ok"

    async def _dispatch_of(self, op: Operation, client: httpx.AsyncClient) -> dict[str, Any] | None:
        """The dispatch of an accepted order, once the dispatch service has made it."""
        auth = {"Authorization": f"Bearer {self._tokens['released']}"}
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            if op.order_id is None:
                found = await self._call(op, client, "GET", "/orders",
                                         headers={"Authorization": f"Bearer {self._token}"},
                                         params={"source": SYSTEM, "external_ref": op.external_ref})
                if found is not None and found.status_code == 200 and found.json():
                    op.order_id = found.json()[0]["id"]
            if op.order_id is not None:
                listed = await self._call(op, client, "GET", f"{self.dispatch_url}/dispatches",
                                          headers=auth, params={"order_id": op.order_id})
                if listed is not None and listed.status_code == 200 and listed.json():
                    return dict(listed.json()[0])
            await asyncio.sleep(0.5 + self._jitter.random())
        return None
