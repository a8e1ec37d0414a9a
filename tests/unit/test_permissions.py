"""The broker's users and rights, and the consumers' check, as the registry derives them."""

from __future__ import annotations

import json

import pytest

from shared import registry
from shared.messaging.permissions import broker_user, broker_users, definitions, owner_of
from shared.messaging.provenance import DEVELOPMENT, Senders
from spine_cli.broker import DEFINITIONS_FILE, render


def test_the_deploy_definitions_are_what_the_registry_generates() -> None:
    # Regenerate with `./spine broker definitions --system mes --out deploy/rabbitmq/definitions.json`.
    assert DEFINITIONS_FILE.read_text() == render(definitions(systems=["mes"]))


def test_every_service_and_outside_system_has_a_user_that_publishes_only_its_own_prefix() -> None:
    document = definitions(systems=["mes"])
    topic = {p["user"]: p["write"] for p in document["topic_permissions"]}
    assert topic == {"order": "^order\\.", "dispatch": "^dispatch\\.",
                     "notification": "^notification\\.", "erp_adapter": "^erp\\.",
                     "mes": "^ext\\.mes\\."}
    assert {u["name"] for u in document["users"]} == {*registry.NAMES, "mes", "spine-ops"}


def test_no_service_user_may_configure_and_each_reads_only_its_own_queues() -> None:
    rights = {p["user"]: p for p in definitions(namespace="ns")["permissions"]}
    assert {user: p["configure"] for user, p in rights.items() if user != "spine-ops"} == {
        name: "^$" for name in registry.NAMES}
    assert rights["dispatch"]["read"] == "^(ns\\.(events|dlx)|ns\\.dispatch\\..+)$"


def test_an_outside_system_named_like_a_service_is_refused() -> None:
    with pytest.raises(ValueError, match="not a valid outside system"):
        broker_users(["order"])


@pytest.mark.parametrize(("routing_key", "owner"), [
    ("order.confirmed", "order"), ("erp.customer.upserted", "erp_adapter"),
    ("dispatch.exception.opened", "dispatch"), ("ext.mes.order.submitted", "mes"),
    ("ext.mes", None), ("widget.made", None), ("order", None),
])
def test_a_routing_key_belongs_to_the_producer_its_first_words_name(
    routing_key: str, owner: str | None,
) -> None:
    assert owner_of(routing_key) == owner


def test_the_broker_user_is_the_login_of_the_url_or_amqps_default_guest() -> None:
    assert broker_user("amqp://order:pw@rabbit:5672/") == "order"
    assert broker_user("amqp://a%40b:pw@rabbit/") == "a@b"
    assert broker_user("amqp://rabbit/") == "guest"


def test_a_shared_development_user_may_send_anything_a_spine_producer_owns() -> None:
    assert DEVELOPMENT.refusal("guest", "ext.mes.order.submitted", "mes") is None
    assert DEVELOPMENT.refusal("guest", "dispatch.created", "dispatch") is None
    assert "may not publish widget.made" in str(DEVELOPMENT.refusal("guest", "widget.made", "w"))


def test_a_service_user_may_send_only_its_prefix_and_a_system_only_its_own() -> None:
    senders = Senders.of(json.loads('{"order": "order", "mes": "mes", "crm": "crm"}'))
    assert senders.refusal("order", "order.confirmed", "order") is None
    assert "may not publish dispatch.created" in str(
        senders.refusal("order", "dispatch.created", "dispatch"))
    assert "may not publish ext.mes.order.submitted" in str(
        senders.refusal("crm", "ext.mes.order.submitted", "mes"))
    assert senders.refusal("mes", "ext.mes.order.submitted", "mes") is None
