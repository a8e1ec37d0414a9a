"""The outbox relay: publishes committed events with confirms and `mandatory`, then marks them sent.

An event no queue binds is not returned: the events exchange's alternate exchange keeps it in
the unrouted queue, and the broker confirms it like any other. `mandatory` stays as the guard
of that guarantee: a return now means the topology itself is broken (the alternate exchange or
its queue is missing), and the event waits in the outbox, with its error, until it is repaired.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import aio_pika
import asyncpg
from sqlalchemy import RowMapping
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import crashpoints
from shared.db.engine import asyncpg_dsn
from shared.db.plumbing import OUTBOX_CHANNEL
from shared.db.transaction import transaction
from shared.messaging.permissions import broker_user
from shared.messaging.topology import Topology

log = logging.getLogger("spine.relay")

# Rows are locked for the duration of their publish, so a second relay (another replica of
# the service) skips them instead of publishing them twice. Rows that already failed in this
# pass ($2) are passed over, so that they cannot hold back the events behind them.
_CLAIM = """
SELECT id, event_id, routing_key, correlation_id, body, headers, reply_to
FROM outbox WHERE sent_at IS NULL AND NOT (id = ANY($2::bigint[]))
ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
_MARK_SENT = "UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1::bigint[])"
_MARK_FAILED = (
    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::bigint[])"
)
# How long a pass waits for the broker before it gives up and `run()` backs off and logs it;
# short, so that `stop()` is not held up by an outage.
_BROKER_WAIT_S = 5.0


class _BatchIncomplete(Exception):
    """Some rows of a batch were not published (already logged); back off, then retry."""


class OutboxRelay:
    """Wakes on NOTIFY from the outbox trigger (and on a slow safety poll) and drains the outbox."""

    def __init__(
        self,
        engine: AsyncEngine,
        amqp_url: str,
        topology: Topology,
        *,
        name: str = "spine",
        batch_size: int = 200,
        poll_interval_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.amqp_url = amqp_url
        # Stamped on every event: the broker checks it is the login, consumers check its prefix.
        self.user_id = broker_user(amqp_url)
        self.topology = topology
        self.name = name
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self.published = 0
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractRobustChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        # Per-row back-off of rows that failed to publish: id → (due at, failures so far).
        self._retry: dict[int, tuple[float, int]] = {}

    async def run(self) -> None:
        """Drain until `stop()`; survives broker and database hiccups by retrying."""
        await self._listen()
        failures = 0
        while not self._stopping.is_set():
            # Clear before draining: a NOTIFY that lands mid-drain then wakes the next wait.
            self._wake.clear()
            try:
                sent = await self.drain()
                failures = 0
            except Exception as exc:  # keep relaying: the rows stay unsent and are retried
                failures += 1
                if not isinstance(exc, _BatchIncomplete):
                    log.warning("outbox relay: %s (retrying)", exc)
                await self._sleep(min(0.2 * 2**failures, 5.0))
                if self._listener is None or self._listener.is_closed():
                    await self._listen()
                continue
            if sent:
                continue
            await self._sleep(self.poll_interval_s)
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()
        await self.close()

    async def stop(self) -> None:
        """Finish the batch in hand, then return from `run()`."""
        self._stopping.set()
        self._wake.set()

    async def close(self) -> None:
        """Close the relay's broker connection (`run()` does on its way out)."""
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            with contextlib.suppress(Exception):  # closing after a broker loss may itself fail
                await connection.close()

    async def drain(self) -> int:
        """Publish every unsent row that is due, one locked batch at a time; returns how many.

        A row that fails (returned, refused, no confirm) stays unsent with its error and waits out its own
        back-off (doubling, up to a minute) before it is claimed again — a NOTIFY for new rows
        does not cut that short, so a stuck event never makes every commit republish it. The
        pass raises when anything failed, so `run()` logs and backs off as well.
        """
        total = 0
        failed: list[int] = []
        now = time.monotonic()
        waiting = [row_id for row_id, (due, _) in self._retry.items() if due > now]
        while True:
            sent, full = await self._publish_batch(waiting + failed, failed)
            total += sent
            if not full or self._stopping.is_set():
                break
        if failed:
            raise _BatchIncomplete(f"{len(failed)} event(s) left unsent")
        return total

    async def _publish_batch(self, skip: list[int], failed_ids: list[int]) -> tuple[int, bool]:
        # The broker first: no rows are locked, no transaction is open, while it is awaited.
        exchange = await self._events_exchange()
        # `transaction` discards the connection if this pass is cancelled at any await, so a
        # cancelled claim can never leave a pooled session holding (or later marking) rows.
        async with transaction(self.engine) as conn:
            rows = (await conn.exec_driver_sql(_CLAIM, (self.batch_size, skip))).mappings().all()
            if not rows:
                return 0, False
            results = await asyncio.gather(
                *(self._publish(row, exchange) for row in rows), return_exceptions=True
            )
            crashpoints.reached("after-publish-before-mark")
            ok = [row["id"] for row, res in zip(rows, results, strict=True)
                  if not isinstance(res, BaseException)]
            failed = [(row, res) for row, res in zip(rows, results, strict=True)
                      if isinstance(res, BaseException)]
            if ok:
                await conn.exec_driver_sql(_MARK_SENT, (ok,))
            if failed:
                reason = f"{failed[0][1].__class__.__name__}: {failed[0][1]}"[:500]
                await conn.exec_driver_sql(_MARK_FAILED, ([row["id"] for row, _ in failed], reason))
                log.error("outbox relay: %d event(s) not published, e.g. %s %s: %s",
                          len(failed), failed[0][0]["routing_key"], failed[0][0]["event_id"],
                          reason)
        # Committed: only now do the marks count.
        self.published += len(ok)
        for row_id in ok:
            self._retry.pop(row_id, None)
        now = time.monotonic()
        for row, _ in failed:
            _, tries = self._retry.get(row["id"], (0.0, 0))
            self._retry[row["id"]] = (now + min(0.5 * 2**tries, 60.0), tries + 1)
            failed_ids.append(row["id"])
        return len(ok), len(rows) == self.batch_size

    async def _publish(self, row: RowMapping, exchange: aio_pika.abc.AbstractExchange) -> None:
        carrier = row["headers"]
        if isinstance(carrier, str):
            carrier = json.loads(carrier)
        # Straight through aio-pika: half the CPU of a FastStream publish per event. The stored
        # `traceparent` is the span that emitted the event, so the consumer's span continues the
        # order journey's trace without a publish span between.
        message = aio_pika.Message(
            row["body"].encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(row["event_id"]),
            correlation_id=str(row["correlation_id"]),
            headers=carrier,
            user_id=self.user_id,
        )
        await exchange.publish(message, routing_key=row["routing_key"], mandatory=True)
        if row["reply_to"] and self._channel is not None:
            # A copy for the queue the cause named, through the default exchange. Not
            # mandatory: a sender that stopped listening must not hold the event back, and the
            # copy on the events exchange is the one kept.
            await self._channel.default_exchange.publish(
                message, routing_key=row["reply_to"], mandatory=False
            )

    async def _events_exchange(self) -> aio_pika.abc.AbstractExchange:
        """The events exchange on the relay's one confirm-mode channel, whose returns raise.

        The relay owns its connection: a robust one, which after a broker restart reconnects
        and reopens the channel (redeclaring the exchange) by itself.
        """
        if self._channel is not None and self._channel.is_closed:
            try:
                await asyncio.wait_for(self._channel.ready(), _BROKER_WAIT_S)
            except TimeoutError:
                # Still reconnecting, or a channel its restore gave up on: the next batch
                # opens a fresh one on the (still robust) connection.
                channel, self._channel, self._exchange = self._channel, None, None
                with contextlib.suppress(Exception):
                    await channel.close()
                raise ConnectionError("the broker connection is not restored yet") from None
        if self._exchange is None:
            if self._connection is None:
                self._connection = await aio_pika.connect_robust(
                    self.amqp_url,
                    timeout=_BROKER_WAIT_S,
                    client_properties={"connection_name": f"{self.name} outbox relay"},
                )
            channel = await self._connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            try:
                self._exchange = await channel.declare_exchange(
                    self.topology.events.name, aio_pika.ExchangeType.TOPIC, durable=True,
                    arguments=self.topology.events_arguments,
                    passive=not self.topology.declare, timeout=_BROKER_WAIT_S,
                )
            except BaseException:
                with contextlib.suppress(Exception):  # or the connection would restore it
                    await channel.close()
                raise
            self._channel = channel
        return self._exchange

    async def _listen(self) -> None:
        try:
            self._listener = await asyncpg.connect(asyncpg_dsn(str(self.engine.url.render_as_string(
                hide_password=False))))
            await self._listener.add_listener(OUTBOX_CHANNEL, lambda *_: self._wake.set())
        except Exception as exc:
            self._listener = None
            log.warning("outbox relay: LISTEN unavailable (%s); polling every %.1fs",
                        exc, self.poll_interval_s)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
