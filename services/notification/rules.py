"""The notification rules file: loaded once at start, validated, or the service does not start.

The file is JSON: `{"version": 1, "rules": [{id, on, when?, notify, channels, title, body,
html?}]}`. `on` is an event type the dispatch or order service publishes; `when` maps data
fields to a value or `{"in": [...]}`; `notify` names `role:<role>`, `user:<id>`, `owner` (an
exception's owner), `requester` (who asked for an approval) or `source` (the outside system
that submitted an order); `channels` are `inbox`, `email`, `webhook`; `title`, `body` (plain
text) and `html` are Jinja2 templates over the event's data (`{{ reason_code }}`), sandboxed.
The service's queue binds exactly the `on` event types of the rules (`rule_events`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The dispatch workflow table drives the rules' event names (DESIGN.md): a rule may be keyed
# only on an event a service's publishers name — the dispatch workflow's, and the order
# service's outcomes (`order.rejected` → the submitting system).
from services.dispatch.publishers import PUBLISHED as DISPATCH_EVENTS
from services.notification.domain import CHANNELS, EVENT_RECIPIENTS, Rule
from services.notification.templates import TemplateError, Templates
from services.order.publishers import PUBLISHED as ORDER_EVENTS
from shared.domain import ROLES

KNOWN_EVENTS = frozenset(DISPATCH_EVENTS) | frozenset(ORDER_EVENTS)

DEFAULT_RULES = Path(__file__).with_name("rules") / "default.json"
RULES_VERSION = 1


class RulesError(ValueError):
    """The rules file cannot be used; the message names the rule and the field."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    in_: list[Any] = Field(alias="in", min_length=1)


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=100, pattern=r"^[a-z0-9][a-z0-9-]*$")
    on: str
    when: dict[str, str | int | bool | None | _In] = Field(default_factory=dict)
    notify: list[str] = Field(min_length=1)
    channels: list[Literal[CHANNELS]] = Field(min_length=1)  # type: ignore[valid-type]
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=4000)
    html: str | None = Field(default=None, max_length=20000)

    @field_validator("on")
    @classmethod
    def _published(cls, value: str) -> str:
        if value not in KNOWN_EVENTS:
            raise ValueError(f"{value!r} is not an event Spine publishes; "
                             f"one of {sorted(KNOWN_EVENTS)}")
        return value

    @field_validator("notify")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        for name in value:
            kind, _, rest = name.partition(":")
            if name in EVENT_RECIPIENTS or (kind == "user" and rest):
                continue
            if kind == "role" and rest in ROLES:
                continue
            raise ValueError(f"{name!r} is not role:<one of {list(ROLES)}>, user:<id>, "
                             f"or one of {sorted(EVENT_RECIPIENTS)}")
        return value


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    rules: list[_Rule]


def load_rules(path: Path = DEFAULT_RULES) -> list[Rule]:
    """The rules of `path`; `RulesError` naming the rule and field of the first problem."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RulesError(f"notification rules {path}: cannot be read as JSON ({exc})") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        raise RulesError(f"notification rules {path}: {_first_problem(raw, exc)}") from None
    ids = [r.id for r in parsed.rules]
    if twice := sorted({i for i in ids if ids.count(i) > 1}):
        raise RulesError(f"notification rules {path}: rule ids {twice} are used twice")
    rules = [Rule(id=r.id, on=r.on, notify=tuple(r.notify), channels=tuple(r.channels),
                  title=r.title, body=r.body, html=r.html,
                  when={k: {"in": v.in_} if isinstance(v, _In) else v for k, v in r.when.items()})
             for r in parsed.rules]
    try:
        Templates(rules)  # a template that does not compile stops the start as a bad field does
    except TemplateError as exc:
        raise RulesError(f"notification rules {path}: {exc}") from None
    return rules


def rule_events(rules: list[Rule]) -> list[str]:
    """The event types the rules are keyed on: the notification queue's binding keys."""
    return sorted({rule.on for rule in rules})


def _first_problem(raw: Any, exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        rules = raw.get("rules") if isinstance(raw, dict) else None
        rule = rules[loc[1]] if isinstance(rules, list) and loc[1] < len(rules) else None
        name = rule.get("id") if isinstance(rule, dict) else None
        field = ".".join(str(p) for p in loc[2:]) or "(the rule)"
        return f"rule {name or '#' + str(loc[1] + 1)!r}, field {field}: {error['msg']}"
    return f"{'.'.join(str(p) for p in loc) or '(the file)'}: {error['msg']}"
