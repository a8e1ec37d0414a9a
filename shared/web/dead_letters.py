"""`/dead-letters`: each service's dead-letter queues for role `ops` — list, show, replay, purge.

The same operations as `spine dlq` (`shared.messaging.dead_letters`), limited to the queues the
service consumes. Each request opens its own short broker connection: these are rare, and a
person waits on them, not a message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import aio_pika
from aio_pika.abc import AbstractConnection
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from shared.auth import Principal, require_roles
from shared.messaging import dead_letters
from shared.messaging.permissions import broker_user
from shared.messaging.topology import consumer_queues
from shared.web import params
from shared.web.params import PRINTABLE
from shared.web.problems import responses
from shared.workflow import InvalidInput, NotFound

OpsDep = Annotated[Principal, Depends(require_roles("ops"))]
QueueName = Annotated[str, Path(max_length=255, pattern=PRINTABLE,
                                description="a queue this service consumes, as listed")]
MessageId = Annotated[str, Path(max_length=255, pattern=PRINTABLE)]
_CONNECT_TIMEOUT_S = 5.0


class BrokerUnavailable(HTTPException):
    """The broker could not be reached, or refused the operation; nothing was changed (503)."""

    def __init__(self, detail: str) -> None:
        super().__init__(503, detail)


class DeadLetterOut(BaseModel):
    message_id: str | None
    routing_key: str = Field(description="the event's own routing key")
    reason: str = Field(description="why it was dead-lettered (our x-spine-error header, "
                        "else the broker's x-death reason)")
    dead_lettered_at: str
    original_queue: str
    preview: str = Field(description="the body on one line, cut at 100 characters")


class DeadLetterDetailOut(DeadLetterOut):
    content_type: str | None
    headers: dict[str, Any]
    body: str = Field(description="the body as UTF-8 text (invalid bytes as U+FFFD)")
    body_is_utf8: bool
    body_base64: str = Field(description="the body exactly")


class DeadLetterQueueOut(BaseModel):
    queue: str = Field(description="the queue the messages died in")
    dead_letter_queue: str
    count: int = Field(description="dead letters waiting (not counting any someone holds)")
    items: list[DeadLetterOut]


class DeadLettersOut(BaseModel):
    queues: list[DeadLetterQueueOut]


class ReplayIn(BaseModel):
    """Replay one dead letter (`message_id`) or all of them (`all: true`)."""

    model_config = ConfigDict(extra="forbid")

    message_id: str | None = Field(default=None, min_length=1, max_length=255, pattern=PRINTABLE)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> ReplayIn:
        if (self.message_id is None) == (not self.all):
            raise ValueError("give either message_id or all: true")
        return self


class ReplayOut(BaseModel):
    queue: str
    replayed: list[str] = Field(description="message ids put back into the queue")
    not_replayed: list[str] = Field(description="what stayed in the dead-letter queue, and why")


class PurgeOut(BaseModel):
    queue: str
    purged: int = Field(description="dead letters deleted, for good")


def dead_letters_router(service: str) -> APIRouter:
    """The `/dead-letters` routes of `service` (over the queues the registry says it consumes)."""
    router = APIRouter(prefix="/dead-letters", tags=["dead letters"])

    def queues_of(request: Request) -> list[str]:
        return [q.name for q in consumer_queues(request.app.state.runtime.topology, service)]

    def own_queue(request: Request, queue: str) -> str:
        names = queues_of(request)
        if queue not in names:
            raise NotFound(f"{service} consumes no queue {queue!r}",
                           queues=names)
        return queue

    @asynccontextmanager
    async def broker(request: Request) -> AsyncIterator[AbstractConnection]:
        settings = request.app.state.runtime.settings
        try:
            conn = await aio_pika.connect(
                settings.dead_letter_amqp_url or settings.amqp_url, timeout=_CONNECT_TIMEOUT_S,
                client_properties={"connection_name": f"{service} dead-letter operations"})
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            raise BrokerUnavailable(f"the broker does not answer: {exc.__class__.__name__}") from exc
        try:
            yield conn
        except dead_letters.QueueMissing as exc:
            raise BrokerUnavailable(f"{exc} (run `spine topology declare`)") from exc
        except dead_letters.ReplayRefused as exc:
            raise BrokerUnavailable(
                f"{exc}; replays need a login consumers accept from anyone (spine-ops): set "
                "SPINE_DEAD_LETTER_AMQP_URL") from exc
        except aio_pika.exceptions.AMQPError as exc:
            raise BrokerUnavailable(f"the broker failed: {exc.__class__.__name__}: {exc}") from exc
        finally:
            await conn.close()

    def replayer(request: Request) -> str:
        settings = request.app.state.runtime.settings
        return broker_user(settings.dead_letter_amqp_url or settings.amqp_url)

    @router.get("", response_model=DeadLettersOut,
                summary="Dead letters of every queue this service consumes, each with its reason",
                responses=responses(401, 403, 422, 503))
    async def list_dead_letters(
        request: Request, _: OpsDep,
        limit: Annotated[int, params.limit(100)] = 20,
    ) -> dict[str, Any]:
        found = []
        async with broker(request) as conn:
            for queue in queues_of(request):
                dlq = f"{queue}.dlq"
                waiting, letters = await dead_letters.peek(conn, dlq, limit)
                found.append({"queue": queue, "dead_letter_queue": dlq, "count": waiting,
                              "items": [letter.summary() for letter in letters]})
        return {"queues": found}

    @router.get("/{queue}/{message_id}", response_model=DeadLetterDetailOut,
                summary="One dead letter in full: every header, the reason, the body",
                responses=responses(401, 403, 404, 422, 503))
    async def get_dead_letter(
        request: Request, _: OpsDep, queue: QueueName, message_id: MessageId,
    ) -> dict[str, Any]:
        name = own_queue(request, queue)
        async with broker(request) as conn:
            letter = await dead_letters.find(conn, f"{name}.dlq", message_id)
        if letter is None:
            raise NotFound(f"no dead letter {message_id} of {name}")
        return letter.detail()

    @router.post("/{queue}/replay", response_model=ReplayOut,
                 summary="Put one dead letter, or all, back into the queue through its inbox",
                 description="A copy keeps its message_id, so one whose effect was committed "
                 "already is a duplicate to the consumer's inbox and has no second effect.",
                 responses=responses(401, 403, 404, 422, 503))
    async def replay_dead_letters(
        request: Request, _: OpsDep, queue: QueueName, body: ReplayIn,
    ) -> dict[str, Any]:
        name = own_queue(request, queue)
        async with broker(request) as conn:
            done = await dead_letters.replay(conn, f"{name}.dlq", user_id=replayer(request),
                                             message_id=body.message_id)
        if body.message_id is not None and not done.replayed and not done.refused:
            raise NotFound(f"no dead letter {body.message_id} of {name}")
        return {"queue": name, "replayed": done.replayed, "not_replayed": done.refused}

    @router.delete("/{queue}", response_model=PurgeOut,
                   summary="Delete every dead letter of one queue, for good",
                   description="`confirm` must repeat the queue's name: a purge cannot be undone.",
                   responses=responses(401, 403, 404, 422, 503))
    async def purge_dead_letters(
        request: Request, _: OpsDep, queue: QueueName,
        confirm: Annotated[str, Query(max_length=255, pattern=PRINTABLE,
                                      description="the queue's name again")],
    ) -> dict[str, Any]:
        name = own_queue(request, queue)
        if confirm != name:
            raise InvalidInput([f"confirm: must repeat the queue's name, {name}"],
                               detail="a purge cannot be undone: confirm it")
        async with broker(request) as conn:
            purged = await dead_letters.purge(conn, f"{name}.dlq")
        return {"queue": name, "purged": purged}

    return router



# Every service's matrix includes these: operating the dead-letter queues is ops's (DESIGN.md).
PERMISSIONS: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/dead-letters"): frozenset({"ops"}),
    ("GET", "/dead-letters/{queue}/{message_id}"): frozenset({"ops"}),
    ("POST", "/dead-letters/{queue}/replay"): frozenset({"ops"}),
    ("DELETE", "/dead-letters/{queue}"): frozenset({"ops"}),
}
