"""Composition root of the notification service: settings → runtime → subscribers → HTTP app."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import httpx
from fastapi import FastAPI

from services.notification import api, permissions, publishers, subscribers
from services.notification.channels import Notifier, SmtpNotifier, WebhookNotifier
from services.notification.config import Settings
from services.notification.rules import load_rules, rule_events
from services.notification.sender import run_sender
from services.notification.templates import Templates
from services.notification.unit_of_work import NAME, NotificationUnitOfWork, sql_unit_of_work
from shared.messaging.broker import delivery_policy
from shared.messaging.topology import binding_keys
from shared.runtime import Runtime
from shared.web.dead_letters import dead_letters_router

# What the queue was bound to before its bindings came from the rules: removed at start.
LEGACY_BINDINGS = ("dispatch.#",)


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    """Wire the service; nothing connects until the app starts."""
    settings = settings or Settings()
    rules = load_rules(settings.rules_file)  # a bad rule or template stops the start, naming it
    templates = Templates(rules)
    runtime = Runtime.build(NAME, settings)
    uow = sql_unit_of_work(runtime.engine)
    keys = rule_events(rules)
    subscribers.register(runtime.broker, runtime.topology, uow, rules, templates.render, keys)
    queue = subscribers.events_queue(runtime.topology, keys).name
    runtime.bindings[queue] = tuple(keys)
    delivery_policy(runtime.broker).add_bindings(queue, keys)  # tells a dead letter's queue
    # Keys the default rules (and `spine topology declare`) bind that this rules file does not
    # name, and the old catch-all: a queue bound to them would consume what no rule wants.
    runtime.retired_bindings[queue] = (*binding_keys(NAME, subscribers.PURPOSE), *LEGACY_BINDINGS)
    runtime.workers["sender-email"] = _sender(settings, uow, "email", lambda: SmtpNotifier(
        host=settings.smtp_host, port=settings.smtp_port, sender=settings.smtp_from,
        starttls=settings.smtp_starttls, username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        timeout_s=settings.smtp_timeout_s, message_id_domain=settings.message_id_domain))
    runtime.workers["sender-webhook"] = _webhook_sender(settings, uow)
    app = runtime.app(routers=[api.router, api.people_router, dead_letters_router(NAME)],
                      uow=uow, permissions=permissions.PERMISSIONS,
                      published=publishers.PUBLISHED,
                      body_limits={"/people/imports": settings.people_import_max_bytes
                                   + api.UPLOAD_OVERHEAD_BYTES})
    app.state.rules = rules
    return runtime, app


Worker = Callable[[], Coroutine[Any, Any, None]]


def _sender(settings: Settings, uow: NotificationUnitOfWork, channel: str,
            notifier: Callable[[], Notifier]) -> Worker:
    def start() -> Coroutine[Any, Any, None]:
        return run_sender(channel, notifier(), uow, policy=settings.retry_policy(),
                          interval_s=settings.sender_interval_s, batch=settings.sender_batch,
                          lease_s=settings.sender_lease_s)
    return start


def _webhook_sender(settings: Settings, uow: NotificationUnitOfWork) -> Worker:
    async def run() -> None:
        # One client (its connection pool) for the worker's life; closed when it is cancelled.
        async with httpx.AsyncClient(timeout=settings.webhook_timeout_s,
                                     follow_redirects=False) as client:
            await run_sender("webhook", WebhookNotifier(client), uow,
                             policy=settings.retry_policy(), interval_s=settings.sender_interval_s,
                             batch=settings.sender_batch, lease_s=settings.sender_lease_s)
    return run


def main() -> None:
    """Run the notification service until SIGINT/SIGTERM."""
    Runtime.main(build)


if __name__ == "__main__":
    main()
