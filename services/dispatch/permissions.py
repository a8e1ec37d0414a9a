"""Who may call each dispatch route at all; the workflow table decides which edge (see notes)."""

from __future__ import annotations

from services.dispatch.domain import EXCEPTION_OWNER, WORKFLOW
from shared.tokens import ROLES
from shared.web import dead_letters
from shared.web.permissions import EVERY_ROLE, Permissions

# Roles that may hold a dispatch's exception: anyone who works on orders. `ops` reads
# everything and operates the dead-letter queues (DESIGN.md, Roles); it changes no dispatch.
EXCEPTION_OWNER_ROLES = frozenset(ROLES) - {"ops"}


def _movers() -> frozenset[str]:
    """Every token role the table lets take some edge; an owner-only edge opens it to owners."""
    roles: set[str] = set()
    for rule in WORKFLOW.rules.values():
        roles |= rule.roles & EVERY_ROLE
        if EXCEPTION_OWNER in rule.roles:
            roles |= EXCEPTION_OWNER_ROLES
    return frozenset(roles)


PERMISSIONS = Permissions("dispatch", {
    ("GET", "/dispatches"): EVERY_ROLE,
    ("GET", "/dispatches/{dispatch_id}"): EVERY_ROLE,
    ("POST", "/dispatches/{dispatch_id}/transitions"): _movers(),
    ("GET", "/dispatches/{dispatch_id}/history"): EVERY_ROLE,
    **dead_letters.PERMISSIONS,
}, notes={
    ("POST", "/dispatches/{dispatch_id}/transitions"):
        "WORKFLOW: the roles of every edge, plus any exception owner (on_hold → back)",
})
