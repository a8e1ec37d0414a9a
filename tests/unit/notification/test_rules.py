"""Notification rules as data: the shipped file loads, a bad rule is refused by name, and the
rules resolve each event to its recipients once per channel."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from services.notification.domain import AggregateRef, Notification, ObservedEvent, Rule
from services.notification.domain import notifications as resolve
from services.notification.rules import DEFAULT_RULES, RulesError, load_rules, rule_events
from services.notification.templates import Templates
from shared import registry


def notifications(rules: list[Rule], event: ObservedEvent) -> list[Notification]:
    return resolve(rules, event, Templates(rules).render)


def event(type_: str, **data: Any) -> ObservedEvent:
    return ObservedEvent(event_id=uuid.uuid4(), type=type_, producer="dispatch",
                         occurred_at=datetime.now(UTC), correlation_id=uuid.uuid4(),
                         causation_id=None, actor_id="u-1", actor_role="planner",
                         aggregate=AggregateRef("dispatch", "d-1", 2), data=data)


def test_the_shipped_rules_load_and_cover_the_default_cases() -> None:
    rules = {r.id: r for r in load_rules(DEFAULT_RULES)}
    assert {r.on for r in rules.values()} >= {
        "dispatch.exception.opened", "dispatch.exception.escalated",
        "dispatch.approval.requested", "dispatch.shipped", "dispatch.corrected",
        "order.rejected"}
    assert rules["order-rejected-to-submitting-system"].notify == ("source",)


def test_the_notification_queue_binds_exactly_the_event_types_of_the_default_rules() -> None:
    assert [key for _, key in registry.NOTIFICATION.consumer_queues] == rule_events(
        load_rules(DEFAULT_RULES))


def test_an_exception_tells_its_owner_and_a_blocking_quality_hold_the_supervisors_too() -> None:
    rules = load_rules(DEFAULT_RULES)
    opened = event("dispatch.exception.opened", dispatch_id="d-1", owner="u-anna",
                   reason_code="quality_hold", blocking=True, description="batch 7",
                   due_at="2027-01-01T12:00:00+00:00")
    told = {(n.recipient, n.channel): n for n in notifications(rules, opened)}
    assert set(told) == {(r, c) for r in ("user:u-anna", "role:supervisor")
                         for c in ("inbox", "email")}
    message = told["user:u-anna", "email"].message
    assert message.title == "Exception quality_hold on dispatch d-1"
    assert message.text == "batch 7 (due 2027-01-01T12:00:00+00:00; blocking: True)"
    assert "<b>quality_hold</b>" in message.html
    minor = event("dispatch.exception.opened", dispatch_id="d-1", owner="role:warehouse",
                  reason_code="stock_shortage", blocking=True)
    assert {n.recipient for n in notifications(rules, minor)} == {"role:warehouse"}


def test_an_order_rejected_tells_the_system_that_submitted_it_by_webhook() -> None:
    rejected = event("order.rejected", external_ref="PO-1", source="mes",
                     reasons=["unknown customer", "no lines"])
    [told] = notifications(load_rules(DEFAULT_RULES), rejected)
    assert (told.recipient, told.channel) == ("system:mes", "webhook")
    assert (told.message.title, told.message.text) == (
        "Order PO-1 rejected", "unknown customer; no lines")


def test_one_recipient_named_by_two_rules_is_told_once_per_channel() -> None:
    rules = load_rules(DEFAULT_RULES)
    opened = event("dispatch.exception.opened", dispatch_id="d-1", owner="role:supervisor",
                   reason_code="damaged_goods", blocking=True)
    assert {(n.recipient, n.channel) for n in notifications(rules, opened)} == {
        ("role:supervisor", "inbox"), ("role:supervisor", "email")}


@pytest.mark.parametrize(("rule", "problem"), [
    ({"on": "dispatch.teleported"}, "rule 'r-1', field on: Value error, 'dispatch.teleported' is not"),
    ({"notify": ["role:boss"]}, "rule 'r-1', field notify: Value error, 'role:boss' is not"),
    ({"channels": ["pigeon"]}, "rule 'r-1', field channels.0: Input should be 'inbox', 'email'"),
    ({"body": "{{ reason_code "}, "rule 'r-1', field body: template does not compile"),
    ({"html": "{% if %}"}, "rule 'r-1', field html: template does not compile"),
    ({"colour": "red"}, "rule 'r-1', field colour: Extra inputs are not permitted"),
    ({"title": ""}, "rule 'r-1', field title: String should have at least 1 character"),
])
def test_a_bad_rule_is_refused_naming_the_rule_and_the_field(
    tmp_path: Path, rule: dict[str, Any], problem: str,
) -> None:
    good = {"id": "r-1", "on": "dispatch.shipped", "notify": ["role:sales"],
            "channels": ["inbox"], "title": "shipped"}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"version": 1, "rules": [{**good, **rule}]}))
    with pytest.raises(RulesError) as refused:
        load_rules(path)
    assert problem in str(refused.value)


def test_a_rules_file_of_another_version_or_with_a_rule_twice_is_refused(tmp_path: Path) -> None:
    rule = {"id": "r-1", "on": "dispatch.shipped", "notify": ["role:sales"],
            "channels": ["inbox"], "title": "shipped"}
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"version": 2, "rules": [rule]}))
    with pytest.raises(RulesError, match="version"):
        load_rules(path)
    path.write_text(json.dumps({"version": 1, "rules": [rule, rule]}))
    with pytest.raises(RulesError, match=r"rule ids \['r-1'\] are used twice"):
        load_rules(path)
