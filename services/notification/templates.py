"""The rules' templates: Jinja2 in its sandbox, compiled once at start, rendered per event.

The sandbox matters because a rules file is data an operator edits: a template may read the
event's fields and format them, never reach Python objects' internals. Text parts are rendered
without escaping; the HTML part with autoescaping, so an event's text cannot inject markup.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from jinja2 import Template, TemplateSyntaxError
from jinja2.sandbox import SandboxedEnvironment

from services.notification.domain import Message, Rule

log = logging.getLogger("spine.notification.templates")

# A rule without an `html` template gets its title and text in this.
DEFAULT_HTML = "<h1>{{ title }}</h1>\n<p>{{ text }}</p>"


class TemplateError(ValueError):
    """A rule's template does not compile: `rule` and `field` name it."""

    def __init__(self, rule: str, field: str, problem: str) -> None:
        super().__init__(f"rule {rule!r}, field {field}: template does not compile ({problem})")
        self.rule, self.field = rule, field


class Templates:
    """Every rule's templates, compiled; `render(rule, data)` is the domain's `Render`."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._text = SandboxedEnvironment(autoescape=False, keep_trailing_newline=False)
        self._html = SandboxedEnvironment(autoescape=True)
        self._default_html = self._html.from_string(DEFAULT_HTML)
        self._compiled: dict[str, tuple[Any, Any, Any]] = {}
        for rule in rules:
            parts: list[Template | None] = []
            for name, env, source in (("title", self._text, rule.title),
                                      ("body", self._text, rule.body),
                                      ("html", self._html, rule.html)):
                if source is None:
                    parts.append(None)
                    continue
                try:
                    parts.append(env.from_string(source))
                except TemplateSyntaxError as exc:
                    raise TemplateError(rule.id, name, f"line {exc.lineno}: {exc.message}") from None
            self._compiled[rule.id] = (parts[0], parts[1], parts[2])

    def render(self, rule: Rule, data: Mapping[str, Any]) -> Message:
        """The rule's message about an event; a template that fails still tells the recipient."""
        title_t, body_t, html_t = self._compiled[rule.id]
        values = dict(data)
        try:
            title = " ".join(title_t.render(values).split())  # a subject is one line
            text = body_t.render(values)
            html = (html_t or self._default_html).render({**values, "title": title, "text": text})
        except Exception as exc:  # a sandbox refusal or a filter's error must not lose the event
            log.warning("rule %s: template failed (%s); sending the plain facts", rule.id,
                        type(exc).__name__)
            title = f"{rule.on} ({rule.id})"
            text = "\n".join(f"{k}: {v}" for k, v in sorted(values.items()))
            html = self._default_html.render({"title": title, "text": text})
        return Message(title=title[:500], text=text, html=html)
