"""Outbound channels, each a real protocol: `SmtpNotifier` (mail) and `WebhookNotifier` (HTTP).

Both are called by the sender worker after the delivery was claimed, outside any transaction;
both raise `ChannelError` (or the protocol's own error) when the receiver did not accept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
import httpx

from services.notification.domain import Claimed

SIGNATURE_HEADER = "X-Spine-Signature"
TIMESTAMP_HEADER = "X-Spine-Timestamp"
DELIVERY_HEADER = "X-Spine-Delivery-Id"
EVENT_HEADER = "X-Spine-Event-Id"


class ChannelError(Exception):
    """The receiver did not take the notification; the message says why (kept as last_error)."""


class Notifier(Protocol):
    async def send(self, delivery: Claimed) -> None:
        """Hand the delivery to its receiver; return only once the receiver accepted it."""
        ...


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 with the person's secret over `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def message_id(delivery: Claimed, domain: str) -> str:
    """The mail's Message-ID: the delivery id, so a resent copy carries the same one."""
    return f"<{delivery.id}@{domain}>"


class SmtpNotifier:
    """Mail over SMTP (aiosmtplib): plain text and HTML parts, STARTTLS and login as configured."""

    def __init__(self, *, host: str, port: int, sender: str, starttls: bool,
                 username: str | None, password: str | None, timeout_s: float,
                 message_id_domain: str) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls, self.username, self.password = starttls, username, password
        self.timeout_s, self.domain = timeout_s, message_id_domain

    def compose(self, delivery: Claimed) -> EmailMessage:
        """The mail of one delivery (ChannelError when the person has no address any more)."""
        if not delivery.email:
            raise ChannelError(f"{delivery.recipient} has no e-mail address in the people directory")
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = delivery.email
        mail["Subject"] = delivery.title
        mail["Message-ID"] = message_id(delivery, self.domain)
        mail[DELIVERY_HEADER] = str(delivery.id)
        mail[EVENT_HEADER] = str(delivery.event_id)
        mail.set_content(delivery.body or delivery.title)
        mail.add_alternative(delivery.html or f"<p>{delivery.title}</p>", subtype="html")
        return mail

    async def send(self, delivery: Claimed) -> None:
        await aiosmtplib.send(
            self.compose(delivery), hostname=self.host, port=self.port,
            start_tls=self.starttls, username=self.username, password=self.password,
            timeout=self.timeout_s)


class WebhookNotifier:
    """A signed JSON POST (httpx) to the person's webhook URL; a 2xx answer is acceptance."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @staticmethod
    def body(delivery: Claimed) -> bytes:
        """The same bytes on every attempt: the receiver deduplicates by the delivery id."""
        return json.dumps({
            "delivery_id": str(delivery.id), "event_id": str(delivery.event_id),
            "event_type": delivery.event_type, "rule_id": delivery.rule_id,
            "recipient": delivery.recipient, "title": delivery.title, "body": delivery.body,
        }, separators=(",", ":"), sort_keys=True).encode()

    async def send(self, delivery: Claimed) -> None:
        if not delivery.webhook_url or not delivery.webhook_secret:
            raise ChannelError(f"{delivery.recipient} has no webhook in the people directory")
        body = self.body(delivery)
        timestamp = str(int(time.time()))
        response = await self.client.post(delivery.webhook_url, content=body, headers={
            "Content-Type": "application/json",
            SIGNATURE_HEADER: webhook_signature(delivery.webhook_secret, timestamp, body),
            TIMESTAMP_HEADER: timestamp,
            DELIVERY_HEADER: str(delivery.id),
            EVENT_HEADER: str(delivery.event_id),
        })
        if not 200 <= response.status_code < 300:
            raise ChannelError(f"webhook answered {response.status_code}: "
                               f"{response.text[:200]!r}")
