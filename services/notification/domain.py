"""What the notification service keeps of each event it observes. No I/O.

The service records each event once, with the aggregate it concerns, and its rules (data:
`services/notification/rules/`) decide who hears about it on which channel.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from shared.domain import Actor, AuditFact, DomainEvent
from shared.workflow import SYSTEM

# The notification service acting on its own: it consumes events, no person asks it to.
SYSTEM_ACTOR = Actor(id="notification", role=SYSTEM)

# The aggregates Spine's events name, in the order they are tried when the event type itself
# does not say (a dispatch event also carries its order_id; the dispatch is its aggregate).
AGGREGATES = ("dispatch", "order", "customer", "product", "notification")


@dataclass(frozen=True)
class AggregateRef:
    type: str | None
    id: str | None
    version: int | None


@dataclass(frozen=True)
class ObservedEvent:
    event_id: uuid.UUID
    type: str
    producer: str
    occurred_at: datetime
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None
    actor_id: str
    actor_role: str
    aggregate: AggregateRef
    data: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class EventObserved(DomainEvent):
    """An event was kept for the first time: what the notification rules will start from."""

    observed: ObservedEvent

    def audit(self) -> AuditFact | None:
        # Keeping a copy changes nothing of anyone's business; the service writes no audit row.
        return None


def aggregate_of(event_type: str, data: Mapping[str, Any]) -> AggregateRef:
    """The aggregate an event is about: named by its type (`dispatch.packed` → dispatch_id)."""
    named = [part for part in event_type.split(".") if part in AGGREGATES]
    for kind in [*named, *AGGREGATES]:
        value = data.get(f"{kind}_id")
        # bool is an int in Python, but never an id.
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            # `version` is the version of the event's own aggregate only.
            version = _version(data.get("version")) if kind in named else None
            return AggregateRef(kind, str(value), version)
    return AggregateRef(None, None, None)


def _version(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


# ---------------------------------------------------------------------------- rules

# Who a rule may name besides `role:<role>` and `user:<id>`: a person or system the event names.
EVENT_RECIPIENTS = {
    "owner": "owner",  # the exception's owner (a user id or role:<role>)
    "requester": "requested_by",  # who asked for an approval
    "source": "source",  # the outside system that submitted an order (order.rejected)
}
# Each a real protocol: the in-app inbox (the row is the entry), SMTP mail, a signed HTTP POST.
CHANNELS = ("inbox", "email", "webhook")
# Channels whose sending happens after the event's transaction, by the sender worker.
OUTBOUND = ("email", "webhook")


@dataclass(frozen=True)
class Rule:
    """On an event type, with conditions on its data, notify recipients on channels.

    `title`, `body` (plain text) and `html` are template sources (Jinja2, sandboxed); the
    service compiles them at start (`services/notification/templates.py`).
    """

    id: str
    on: str
    notify: tuple[str, ...]
    channels: tuple[str, ...]
    title: str
    body: str
    # field → a value it must equal, or {"in": [values]}.
    when: Mapping[str, Any] = field(default_factory=dict)
    html: str | None = None

    def applies_to(self, event_type: str, data: Mapping[str, Any]) -> bool:
        if event_type != self.on:
            return False
        for name, expected in self.when.items():
            value = data.get(name)
            if isinstance(expected, Mapping):
                if value not in expected["in"]:
                    return False
            elif value != expected:
                return False
        return True

    def recipients(self, data: Mapping[str, Any]) -> list[str]:
        """`user:<id>`, `role:<role>` or `system:<name>` of each recipient, once each.

        A role stays an address here: the inbox keeps one entry for the role, and the outbound
        channels reach each holder the people directory lists (resolved where the rows are
        written, in the same statement).
        """
        found: list[str] = []
        for name in self.notify:
            target = data.get(EVENT_RECIPIENTS[name]) if name in EVENT_RECIPIENTS else name
            if not isinstance(target, str) or not target:
                continue  # the event names nobody there: nobody to tell
            if name == "source":
                recipient = f"system:{target}"
            elif target.startswith(("role:", "user:")):
                recipient = target
            else:
                recipient = f"user:{target}"
            if recipient not in found:
                found.append(recipient)
        return found


@dataclass(frozen=True)
class Message:
    """What a rule says to its recipients about one event: rendered from its templates."""

    title: str
    text: str
    html: str


Render = Callable[[Rule, Mapping[str, Any]], Message]


@dataclass(frozen=True)
class Notification:
    """One address to tell on one channel, because of one event and one rule."""

    event_id: uuid.UUID
    rule_id: str
    recipient: str
    channel: str
    message: Message


def notifications(rules: Sequence[Rule], event: ObservedEvent,
                  render: Render) -> list[Notification]:
    """Everyone the rules say must hear of `event`, each address on each channel once."""
    found: dict[tuple[str, str], Notification] = {}
    for rule in rules:
        if not rule.applies_to(event.type, event.data):
            continue
        message = render(rule, event.data)
        for recipient in rule.recipients(event.data):
            for channel in rule.channels:
                # One event tells one recipient once per channel, whichever rules name them.
                found.setdefault((recipient, channel), Notification(
                    event.event_id, rule.id, recipient, channel, message))
    return list(found.values())


@dataclass(frozen=True, kw_only=True)
class NotificationsQueued(DomainEvent):
    """The rules named people to tell of an event (the delivery rows say who and how)."""

    event: ObservedEvent
    count: int

    def audit(self) -> AuditFact:
        return AuditFact(action="notification.queued", entity_type="event",
                         entity_id=str(self.event.event_id),
                         details={"type": self.event.type, "deliveries": self.count})


# ---------------------------------------------------------------------------- deliveries

PENDING, SENT, FAILED = "pending", "sent", "failed"
STATUSES = (PENDING, SENT, FAILED)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, up to a number of attempts."""

    max_attempts: int = 8
    base_s: float = 2.0
    cap_s: float = 600.0

    def delay(self, attempts: int, jitter: float) -> float | None:
        """Seconds before the next attempt after `attempts` failed ones; None: give up.

        `jitter` in [0, 1) spreads the retries of many deliveries that failed together over
        the upper half of the interval, so a recovering receiver is not hit by all at once.
        """
        if attempts >= self.max_attempts:
            return None
        ceiling = min(self.cap_s, self.base_s * 2.0 ** max(attempts - 1, 0))
        return float(ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0))


@dataclass(frozen=True)
class Claimed:
    """A due delivery the sender took for one attempt, with what it needs to send it."""

    id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    correlation_id: uuid.UUID
    rule_id: str
    recipient: str
    channel: str
    attempts: int  # counting this one
    title: str
    body: str
    html: str | None
    email: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeliveryOutcome(DomainEvent):
    """A delivery reached a final status: `notification.delivered` or `notification.failed`."""

    delivery: Claimed
    status: str
    error: str | None = None

    def audit(self) -> AuditFact:
        return AuditFact(action=f"notification.{'delivered' if self.status == SENT else 'failed'}",
                         entity_type="delivery", entity_id=str(self.delivery.id),
                         from_state=PENDING, to_state=self.status, reason=self.error,
                         details={"event_id": str(self.delivery.event_id),
                                  "recipient": self.delivery.recipient,
                                  "channel": self.delivery.channel,
                                  "attempts": self.delivery.attempts})


@dataclass(frozen=True, kw_only=True)
class DeliveryRetried(DomainEvent):
    """Ops sent a failed delivery back to the sender (its attempts start again)."""

    delivery_id: uuid.UUID
    previous_attempts: int
    previous_error: str | None

    def audit(self) -> AuditFact:
        return AuditFact(action="notification.retried", entity_type="delivery",
                         entity_id=str(self.delivery_id), from_state=FAILED, to_state=PENDING,
                         reason=self.previous_error,
                         details={"previous_attempts": self.previous_attempts})


class DeliveryNotFound(LookupError):
    """No delivery with that id."""


class NotRetriable(ValueError):
    """Only a failed delivery can be sent again; the message says its status."""


# ---------------------------------------------------------------------------- people

PERSON_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,99}")
EMAIL = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+")
PEOPLE_COLUMNS = ("id", "name", "roles", "email", "webhook_url", "webhook_secret")
MIN_SECRET = 16


@dataclass(frozen=True)
class Person:
    """Someone (or an outside system) the rules can reach, and how."""

    id: str
    name: str
    roles: tuple[str, ...]
    email: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None

    def public(self) -> dict[str, Any]:
        """What may be shown: everything but the webhook secret (only whether there is one)."""
        return {"id": self.id, "name": self.name, "roles": list(self.roles), "email": self.email,
                "webhook_url": self.webhook_url, "has_webhook_secret": bool(self.webhook_secret)}

    def changed_fields(self, stored: Person | None) -> list[str]:
        """Names of the fields that differ from `stored` (all of them for a new person)."""
        if stored is None:
            return list(PEOPLE_COLUMNS)
        return [f for f in PEOPLE_COLUMNS if getattr(self, f) != getattr(stored, f)]


@dataclass(frozen=True)
class RowProblem:
    """Why one row of a people file was refused, in words a person can act on."""

    row: int
    reasons: tuple[str, ...]
    key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "key": self.key, "reasons": list(self.reasons),
                "message": f"row {self.row}: {'; '.join(self.reasons)}"}


class UnreadablePeopleFile(ValueError):
    """The file is not a people CSV at all (no row can be read)."""


def read_people(content: bytes, roles: Sequence[str]) -> tuple[list[Person], list[RowProblem]]:
    """The people of a CSV (`id,name,roles,email,webhook_url,webhook_secret`) and bad rows."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UnreadablePeopleFile("the file is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [(h or "").strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in ("id", "name") if c not in header]
    unknown = [h for h in header if h not in PEOPLE_COLUMNS]
    if missing or unknown:
        raise UnreadablePeopleFile(
            f"the header must name {', '.join(PEOPLE_COLUMNS)} (id and name required); "
            f"missing {missing or 'none'}, unknown {unknown or 'none'}")
    reader.fieldnames = header
    people: list[Person] = []
    problems: list[RowProblem] = []
    first: dict[str, int] = {}
    try:
        for number, raw in enumerate(reader, start=2):  # row 1 is the header
            person, reasons = _person(raw, roles)
            key = (raw.get("id") or "").strip() or None
            if key is not None and key in first:
                reasons.append(f"id {key!r} already appears in row {first[key]}")
            elif key is not None:
                first[key] = number
            if reasons or person is None:
                problems.append(RowProblem(number, tuple(reasons), key))
            else:
                people.append(person)
    except csv.Error as exc:
        raise UnreadablePeopleFile(f"not a CSV file: {exc}") from None
    return people, problems


def _person(raw: Mapping[str, Any], known_roles: Sequence[str]) -> tuple[Person | None, list[str]]:
    if None in raw:
        return None, ["the row has more fields than the header"]
    values = {k: (v or "").strip() for k, v in raw.items()}
    reasons: list[str] = []
    pid, name = values.get("id", ""), values.get("name", "")
    if not PERSON_ID.fullmatch(pid):
        reasons.append("id must be 1-100 letters, digits, '.', '_', '@' or '-'")
    if not name or len(name) > 200:
        reasons.append("name is required (at most 200 characters)")
    roles = tuple(sorted({r for r in re.split(r"[;\s]+", values.get("roles", "")) if r}))
    if unknown := [r for r in roles if r not in known_roles]:
        reasons.append(f"unknown role(s) {unknown}; roles are {list(known_roles)}")
    email = values.get("email") or None
    if email is not None and (len(email) > 254 or not EMAIL.fullmatch(email)):
        reasons.append(f"{email!r} is not an e-mail address")
    url = values.get("webhook_url") or None
    secret = values.get("webhook_secret") or None
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2000:
            reasons.append(f"webhook_url {url!r} is not an http(s) URL")
        if secret is None or len(secret) < MIN_SECRET:
            reasons.append(f"a webhook needs a webhook_secret of at least {MIN_SECRET} characters")
    elif secret is not None:
        reasons.append("webhook_secret without a webhook_url")
    if reasons:
        return None, reasons
    return Person(pid, name, roles, email, url, secret), reasons


@dataclass
class PeopleImportReport:
    """The outcome of one people file, counted per row (changed rows only are written)."""

    filename: str
    rows_total: int
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    problems: list[RowProblem] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.filename}: {self.rows_total} row{'' if self.rows_total == 1 else 's'} — "
                f"{self.created} new, {self.updated} updated, {self.unchanged} unchanged, "
                f"{len(self.problems)} rejected")


@dataclass(frozen=True, kw_only=True)
class PersonUpserted(DomainEvent):
    """A person was added to or changed in the directory (the secret's value is never kept)."""

    person: Person
    fields: tuple[str, ...]
    new: bool

    def audit(self) -> AuditFact:
        return AuditFact(action="person.created" if self.new else "person.updated",
                         entity_type="person", entity_id=self.person.id,
                         details={"fields": list(self.fields), "roles": list(self.person.roles)})
