"""Notification channels against real peers: an SMTP server (aiosmtpd) and HTTP servers.

The service runs in-process on its own database and namespace (the `notification` fixture of
test_notification_inbox); the peers are real servers on free ports. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from services.notification.channels import SmtpNotifier
from services.notification.handlers import ClaimDue, handle
from services.notification.unit_of_work import sql_unit_of_work
from shared.contracts.envelope import Actor, new_envelope
from shared.db.engine import make_engine
from shared.stack import free_port
from tests.conftest import Servers
from tests.integration.test_notification_inbox import Notification, isolated_notification

pytestmark = pytest.mark.integration

SECRET = "whsec-0123456789abcdef"
PEOPLE = (
    "id,name,roles,email,webhook_url,webhook_secret\n"
    "u-anna,Anna Berg,warehouse,anna@plant.example,,\n"
    "u-sam,Sam Sale,sales,sam@plant.example,{hook},{secret}\n"
    "u-ivy,Ivy Int,integration,,{hook},{secret}\n"
    "u-boss,Bo Boss,supervisor,boss@plant.example,,\n"
    "bad one,Nobody,boss,,,\n"
)


@pytest.fixture
async def notification(
    monkeypatch: pytest.MonkeyPatch, servers: Servers
) -> AsyncIterator[Notification]:
    async with isolated_notification(monkeypatch, servers) as made:
        yield made


# ------------------------------------------------------------------------------ the peers


@dataclass
class Mailbox:
    """What a real SMTP server (aiosmtpd) received."""

    mails: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.mails.append(email.message_from_bytes(
            envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@dataclass
class Receiver:
    """A webhook receiver that checks signatures and fails the first `fail_first` POSTs."""

    fail_first: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)  # delivery id → times

    def take(self, headers: Any, body: bytes) -> int:
        stamp, signature = headers["X-Spine-Timestamp"], headers["X-Spine-Signature"]
        expected = "sha256=" + hmac.new(SECRET.encode(), stamp.encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(signature, expected)
        self.posts.append({"valid": valid, "delivery": headers["X-Spine-Delivery-Id"],
                           "body": json.loads(body)})
        if not valid:
            return 401
        if len(self.posts) <= self.fail_first:
            return 503
        delivery = headers["X-Spine-Delivery-Id"]  # how a receiver deduplicates
        self.accepted[delivery] = self.accepted.get(delivery, 0) + 1
        return 204


@contextmanager
def http_receiver(receiver: Receiver) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(receiver.take(self.headers, body))
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ helpers


def fast(notification: Notification, **settings: Any) -> Notification:
    """The service with a quick sender (short idle wait, backoff and lease) and `settings`."""
    notification.settings = notification.settings.model_copy(update={
        "sender_interval_s": 0.1, "retry_base_s": 0.2, "retry_cap_s": 0.5,
        "sender_lease_s": 1.0, **settings})
    return notification


def exception_opened(owner: str) -> dict[str, Any]:
    return new_envelope(type="dispatch.exception.opened", producer="dispatch", data={
        "exception_id": str(uuid.uuid4()), "dispatch_id": "d-1", "order_id": "o-1",
        "version": 2, "status": "open", "owner": owner, "reason_code": "stock_shortage",
        "blocking": False, "due_at": "2027-01-01T12:00:00+00:00",
        "description": "bin <empty>"}, actor=Actor(id="u-planner", role="planner"))


def corrected() -> dict[str, Any]:
    return new_envelope(type="dispatch.corrected", producer="dispatch", data={
        "dispatch_id": "d-2", "order_id": "o-2", "version": 7, "reason": "typo",
        "requested_by": "u-a", "approved_by": "u-b", "changes": []},
        actor=Actor(id="u-b", role="supervisor"))


async def load_people(notification: Notification, http: Any, hook: str) -> dict[str, Any]:
    csv = PEOPLE.format(hook=hook, secret=SECRET).encode()
    answer = await http.post("/people/imports", headers=notification.token("ops"),
                             files={"file": ("people.csv", csv, "text/csv")})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def eventually(check: Any, timeout: float = 15.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = await check()
        if found:
            return found
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out; last: {found!r}")
        await asyncio.sleep(0.1)


async def deliveries(notification: Notification, event_id: str) -> list[dict[str, Any]]:
    rows = await notification.db.fetch(
        "SELECT id::text, recipient, channel, status, attempts, last_error FROM "
        "notification_delivery WHERE event_id = $1::uuid ORDER BY recipient, channel", event_id)
    return [dict(r) for r in rows]


async def outbox(notification: Notification) -> list[tuple[str, dict[str, Any]]]:
    rows = await notification.db.fetch("SELECT routing_key, body FROM outbox ORDER BY id")
    return [(r["routing_key"], json.loads(r["body"])["data"]) for r in rows]


# ------------------------------------------------------------------------------ the tests


async def test_people_import_reports_bad_rows_counts_changes_and_lists_no_secret(
    notification: Notification,
) -> None:
    async with notification.service() as http:
        first = await load_people(notification, http, "http://127.0.0.1:9/hook")
        assert (first["created"], first["updated"], first["unchanged"], first["rejected"]) == (
            4, 0, 0, 1)
        assert first["errors"][0]["row"] == 6 and first["errors"][0]["key"] == "bad one"
        again = await load_people(notification, http, "http://127.0.0.1:9/hook")
        assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 4)
        changed = await load_people(notification, http, "http://127.0.0.1:10/hook")
        assert (changed["updated"], changed["unchanged"]) == (2, 2)
        listed = await http.get("/people", headers=notification.token("supervisor"),
                                params={"limit": 2})
        assert [p["id"] for p in listed.json()] == ["u-anna", "u-boss"]
        assert SECRET not in (await http.get("/people", headers=notification.token("ops"))).text
        sales = await http.get("/people", params={"role": "sales"},
                               headers=notification.token("ops"))
        assert [(p["id"], p["has_webhook_secret"]) for p in sales.json()] == [("u-sam", True)]
        broken = await http.post("/people/imports", headers=notification.token("ops"),
                                 files={"file": ("x.csv", b"who,what\n1,2\n", "text/csv")})
        assert broken.status_code == 400
        assert broken.headers["content-type"] == "application/problem+json"
    # Audit rows name who loaded whom, never a secret.
    audit = await notification.db.fetch("SELECT actor_role, action, details::text FROM audit_log "
                                        "WHERE entity_type = 'person'")
    assert len(audit) == 6 and {a["actor_role"] for a in audit} == {"ops"}
    assert not any(SECRET in a["details"] for a in audit)


async def test_an_exception_mails_its_owner_once_with_text_html_and_message_id(
    notification: Notification,
) -> None:
    with smtp_server() as (mailbox, port):
        fast(notification, smtp_port=port)
        event = exception_opened("u-anna")
        async with notification.service() as http:
            await load_people(notification, http, "http://127.0.0.1:9/hook")
            for _ in range(3):  # a duplicated event, redelivered
                await notification.publish_event(event)

            async def sent() -> list[dict[str, Any]]:
                rows = await deliveries(notification, event["event_id"])
                return rows if any(r["status"] == "sent" and r["channel"] == "email"
                                   for r in rows) else []
            rows = await eventually(sent)
            await asyncio.sleep(0.5)  # a second mail would arrive now
    assert [(r["recipient"], r["channel"], r["status"], r["attempts"]) for r in rows] == [
        ("user:u-anna", "email", "sent", 1), ("user:u-anna", "inbox", "sent", 1)]
    [mail] = mailbox.mails
    email_row = rows[0]
    assert mail["To"] == "anna@plant.example"
    assert mail["Subject"] == "Exception stock_shortage on dispatch d-1"
    assert mail["Message-ID"] == f"<{email_row['id']}@spine.local>"
    plain = mail.get_body(preferencelist=("plain",))
    html = mail.get_body(preferencelist=("html",))
    assert plain is not None and "bin <empty>" in plain.get_content()
    assert html is not None and "bin &lt;empty&gt;" in html.get_content()
    published = await outbox(notification)
    assert [(k, d["delivery_id"], d["event_id"]) for k, d in published] == [
        ("notification.delivered", email_row["id"], event["event_id"])]


async def test_a_webhook_down_for_a_while_gets_it_once_and_a_dead_mail_server_blocks_nothing(
    notification: Notification,
) -> None:
    receiver = Receiver(fail_first=2)
    dead_smtp = free_port()  # nobody listens: every mail attempt fails
    with http_receiver(receiver) as hook:
        fast(notification, smtp_port=dead_smtp, delivery_max_attempts=3)
        event = corrected()
        async with notification.service() as http:
            await load_people(notification, http, hook)
            await notification.publish_event(event)
            # Sales (Sam) by mail and webhook, integration (Ivy) by webhook: the webhooks get
            # through after two refusals, while every mail attempt fails and then gives up.
            async def settled() -> list[dict[str, Any]]:
                rows = await deliveries(notification, event["event_id"])
                outbound = [r for r in rows if r["channel"] != "inbox"]
                return rows if outbound and all(r["status"] != "pending" for r in outbound) else []
            rows = await eventually(settled, timeout=20)
    by = {(r["recipient"], r["channel"]): r for r in rows}
    assert by["user:u-sam", "webhook"]["status"] == "sent"
    assert by["user:u-ivy", "webhook"]["status"] == "sent"
    assert by["user:u-sam", "email"]["status"] == "failed"
    assert by["user:u-sam", "email"]["attempts"] == 3
    assert "ConnectionRefused" in by["user:u-sam", "email"]["last_error"] or \
        "connect" in by["user:u-sam", "email"]["last_error"].lower()
    assert ("user:u-ivy", "email") not in by  # no address: not a channel for her
    assert {by[k]["status"] for k in by if k[1] == "inbox"} == {"sent"}
    # Every POST was signed; each delivery was accepted exactly once, whatever failed before.
    assert all(p["valid"] for p in receiver.posts)
    assert sorted(receiver.accepted.values()) == [1, 1]
    assert len(receiver.posts) == 4
    kinds = sorted(k for k, _ in await outbox(notification))
    assert kinds == ["notification.delivered", "notification.delivered", "notification.failed"]


async def test_ops_retry_a_failed_delivery_and_it_is_sent_once_the_server_is_back(
    notification: Notification,
) -> None:
    with smtp_server() as (mailbox, port):
        dead = free_port()
        fast(notification, smtp_port=dead, delivery_max_attempts=1)
        event = exception_opened("u-anna")
        async with notification.service() as http:
            await load_people(notification, http, "http://127.0.0.1:9/hook")
            await notification.publish_event(event)

            async def failed() -> list[dict[str, Any]]:
                rows = await deliveries(notification, event["event_id"])
                return [r for r in rows if r["channel"] == "email" and r["status"] == "failed"]
            [row] = await eventually(failed)
            listed = await http.get("/deliveries", params={"status": "failed"},
                                    headers=notification.token("supervisor"))
            assert [d["id"] for d in listed.json()] == [row["id"]]
            refused = await http.post(f"/deliveries/{row['id']}/retry",
                                      headers=notification.token("supervisor"))
            assert refused.status_code == 403
        # The mail server is back (the service restarted pointing at it): ops retry.
        fast(notification, smtp_port=port)
        async with notification.service() as http:
            retried = await http.post(f"/deliveries/{row['id']}/retry",
                                      headers=notification.token("ops"))
            assert retried.status_code == 200, retried.text
            assert (retried.json()["status"], retried.json()["attempts"]) == ("pending", 0)

            async def sent() -> list[dict[str, Any]]:
                rows = await deliveries(notification, event["event_id"])
                return [r for r in rows if r["channel"] == "email" and r["status"] == "sent"]
            await eventually(sent)
            again = await http.post(f"/deliveries/{row['id']}/retry",
                                    headers=notification.token("ops"))
            assert again.status_code == 409
            assert again.headers["content-type"] == "application/problem+json"
            missing = await http.post(f"/deliveries/{uuid.uuid4()}/retry",
                                      headers=notification.token("ops"))
            assert missing.status_code == 404
    assert len(mailbox.mails) == 1
    kinds = [k for k, _ in await outbox(notification)]
    assert kinds == ["notification.failed", "notification.delivered"]


async def test_a_sender_that_died_between_sending_and_recording_sends_again_never_loses_it(
    notification: Notification,
) -> None:
    # The state a SIGKILL at `after-outbound-before-record` leaves: the attempt was claimed
    # (its lease committed) and the mail went out, and nothing recorded it. (The process kill
    # itself is proven end to end in tests/e2e/test_crash_points.py's style; here the same
    # state is built by hand so the lease's expiry can be watched.)
    with smtp_server() as (mailbox, port):
        fast(notification, smtp_port=port, sender_lease_s=1.0)
        event = exception_opened("u-anna")
        settings = notification.settings
        async with notification.service() as http:
            await load_people(notification, http, "http://127.0.0.1:9/hook")
        # A "first process" whose own sender is asleep: the attempt is ours to take and send.
        fast(notification, smtp_port=port, sender_interval_s=60.0)
        async with notification.service():
            await notification.publish_event(event)
            await notification.wait_for(
                "SELECT count(*) = 2 FROM notification_delivery WHERE event_id = $1::uuid",
                event["event_id"])
            engine = make_engine(settings.database_url, pool_size=1, service="test")
            try:
                [mine] = await handle(ClaimDue("email", 10, 1.0), sql_unit_of_work(engine))
            finally:
                await engine.dispose()
            await SmtpNotifier(host="127.0.0.1", port=port, sender=settings.smtp_from,
                               starttls=False, username=None, password=None, timeout_s=5,
                               message_id_domain=settings.message_id_domain).send(mine)
            # ... and here it died: nothing records the mail the server has.
        assert len(mailbox.mails) == 1
        fast(notification, smtp_port=port)
        async with notification.service():
            async def sent() -> list[dict[str, Any]]:
                rows = await deliveries(notification, event["event_id"])
                return [r for r in rows if r["channel"] == "email" and r["status"] == "sent"]
            [row] = await eventually(sent)
    # At most the documented duplicate: the same Message-ID twice, never a lost mail.
    ids = [m["Message-ID"] for m in mailbox.mails]
    assert ids == [f"<{row['id']}@spine.local>"] * 2
    assert row["attempts"] == 2
    assert [k for k, _ in await outbox(notification)] == ["notification.delivered"]
