"""The pure parts of delivering: backoff with jitter, the webhook signature, the mail's parts,
the sandboxed templates, and the people file."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from pathlib import Path

import pytest

from services.notification.channels import (
    DELIVERY_HEADER,
    ChannelError,
    SmtpNotifier,
    WebhookNotifier,
    webhook_signature,
)
from services.notification.domain import Claimed, Person, RetryPolicy, Rule, read_people
from services.notification.rules import RulesError, load_rules
from services.notification.templates import Templates
from shared.domain import ROLES


def claimed(**overrides: object) -> Claimed:
    values: dict[str, object] = dict(
        id=uuid.uuid4(), event_id=uuid.uuid4(), event_type="dispatch.exception.opened",
        correlation_id=uuid.uuid4(), rule_id="r-1", recipient="user:u-anna", channel="email",
        attempts=1, title="Exception on d-1", body="bin empty", html="<p>bin empty</p>",
        email="anna@plant.example")
    values.update(overrides)
    return Claimed(**values)  # type: ignore[arg-type]


def test_backoff_grows_exponentially_within_its_jitter_and_stops_at_the_limit() -> None:
    policy = RetryPolicy(max_attempts=5, base_s=2, cap_s=10)
    assert [policy.delay(n, 0.0) for n in range(1, 5)] == [1.0, 2.0, 4.0, 5.0]
    assert [policy.delay(n, 0.999) for n in range(1, 5)] == pytest.approx([2, 4, 8, 10], rel=1e-2)
    assert policy.delay(5, 0.5) is None


def test_the_webhook_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"s" * 20, b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signature("s" * 20, "1700000000", body) == f"sha256={expected}"
    assert webhook_signature("s" * 20, "1700000001", body) != f"sha256={expected}"


def test_a_webhook_body_is_the_same_bytes_on_every_attempt() -> None:
    first = claimed(channel="webhook")
    again = Claimed(**{**first.__dict__, "attempts": 3})
    assert WebhookNotifier.body(first) == WebhookNotifier.body(again)


def test_a_mail_has_a_plain_and_an_html_part_and_the_delivery_id_as_message_id() -> None:
    delivery = claimed()
    mail = SmtpNotifier(host="h", port=25, sender="spine@x", starttls=False, username=None,
                        password=None, timeout_s=1, message_id_domain="spine.test").compose(delivery)
    assert mail["Message-ID"] == f"<{delivery.id}@spine.test>"
    assert mail[DELIVERY_HEADER] == str(delivery.id)
    assert [p.get_content_type() for p in mail.iter_parts()] == ["text/plain", "text/html"]
    with pytest.raises(ChannelError, match="no e-mail address"):
        SmtpNotifier(host="h", port=25, sender="s@x", starttls=False, username=None,
                     password=None, timeout_s=1, message_id_domain="d").compose(
            claimed(email=None))


def rule(**templates: str) -> Rule:
    return Rule(id="r-1", on="dispatch.shipped", notify=("role:sales",), channels=("inbox",),
                title=templates.get("title", "t"), body=templates.get("body", ""),
                html=templates.get("html"))


def test_templates_are_sandboxed_escape_html_and_never_lose_the_notification() -> None:
    templates = Templates([rule(title="{{ x.__class__.__mro__ }}", body="{{ a }}",
                                html="<p>{{ a }}</p>")])
    message = templates.render(rule(), {"a": "<script>", "x": 1})
    # The sandbox refuses the attribute walk: the rule still tells, with the plain facts.
    assert message.title == "dispatch.shipped (r-1)"
    escaped = Templates([rule(body="{{ a }}", html="<p>{{ a }}</p>")]).render(rule(), {"a": "<b>"})
    assert (escaped.text, escaped.html) == ("<b>", "<p>&lt;b&gt;</p>")


def test_a_template_that_does_not_compile_stops_loading_naming_rule_and_field(
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"version": 1, "rules": [{"id": "r-9", "on": "dispatch.shipped", '
                    '"notify": ["role:sales"], "channels": ["email"], "title": "{{ oops"}]}')
    with pytest.raises(RulesError, match="rule 'r-9', field title: template does not compile"):
        load_rules(path)


def test_a_people_file_keeps_good_rows_and_names_each_bad_one() -> None:
    content = (
        b"id,name,roles,email,webhook_url,webhook_secret\n"
        b"u-anna,Anna,warehouse;supervisor,anna@plant.example,,\n"
        b"mes,MES,,,https://mes.example/hook,0123456789abcdef0123\n"
        b"bad id,Bob,boss,not-an-address,,\n"
        b"u-anna,Anna again,,,,\n"
        b"u-carl,Carl,sales,,ftp://x,short\n"
    )
    people, problems = read_people(content, ROLES)
    assert people == [
        Person("u-anna", "Anna", ("supervisor", "warehouse"), "anna@plant.example"),
        Person("mes", "MES", (), None, "https://mes.example/hook", "0123456789abcdef0123")]
    assert [(p.row, p.key) for p in problems] == [(4, "bad id"), (5, "u-anna"), (6, "u-carl")]
    assert len(problems[0].reasons) == 3  # id, role, e-mail
    assert "already appears in row 2" in problems[1].reasons[0]
    assert any("http(s)" in r for r in problems[2].reasons)
    assert any("at least 16" in r for r in problems[2].reasons)
    assert Person("u-anna", "Anna", ("warehouse",)).changed_fields(people[0]) == ["roles", "email"]
    assert "webhook_secret" not in people[1].public()
