"""Who may call each dispatch route at all; the workflow tables decide the rest (see notes)."""

from __future__ import annotations

from typing import Any

from services.dispatch.domain import (
    APPROVALS,
    CORRECTION_ROLES,
    EXCEPTION_OWNER,
    EXCEPTION_OWNER_ROLES,
    EXCEPTIONS,
    WORKFLOW,
    ExceptionStatus,
)
from shared.web import dead_letters
from shared.web.permissions import EVERY_ROLE, Permissions
from shared.workflow import Workflow


def _movers(workflow: Workflow[Any, Any], *, owners: bool = True) -> frozenset[str]:
    """Every token role a table lets take some edge; with `owners`, an edge open to an
    exception's owner opens the route to every role that may own one."""
    roles: set[str] = set()
    for rule in workflow.rules.values():
        if rule.source is None:
            continue
        roles |= rule.roles & EVERY_ROLE
        if owners and EXCEPTION_OWNER in rule.roles:
            roles |= EXCEPTION_OWNER_ROLES
    return frozenset(roles)


def _openers() -> frozenset[str]:
    rule = EXCEPTIONS.rule(None, ExceptionStatus.OPEN)
    assert rule is not None  # nosec B101 # the table has its creation edge
    return rule.roles & EVERY_ROLE


PERMISSIONS = Permissions("dispatch", {
    ("GET", "/dispatches"): EVERY_ROLE,
    ("GET", "/dispatches/{dispatch_id}"): EVERY_ROLE,
    ("POST", "/dispatches/{dispatch_id}/transitions"): _movers(WORKFLOW, owners=False),
    ("GET", "/dispatches/{dispatch_id}/history"): EVERY_ROLE,
    ("POST", "/dispatches/{dispatch_id}/exceptions"): _openers(),
    ("POST", "/dispatches/{dispatch_id}/corrections"): CORRECTION_ROLES,
    ("GET", "/exceptions"): EVERY_ROLE,
    ("GET", "/exceptions/{exception_id}"): EVERY_ROLE,
    ("POST", "/exceptions/{exception_id}/acknowledge"): _movers(EXCEPTIONS),
    ("POST", "/exceptions/{exception_id}/resolve"): _movers(EXCEPTIONS),
    ("GET", "/approvals"): EVERY_ROLE,
    ("GET", "/approvals/{approval_id}"): EVERY_ROLE,
    ("POST", "/approvals/{approval_id}/approve"): _movers(APPROVALS),
    ("POST", "/approvals/{approval_id}/reject"): _movers(APPROVALS),
    ("GET", "/timeline"): EVERY_ROLE,
    **dead_letters.PERMISSIONS,
}, notes={
    ("POST", "/dispatches/{dispatch_id}/transitions"):
        "WORKFLOW: the roles of every edge; an owner returns a dispatch from hold by resolving "
        "its exceptions (/exceptions/{id}/resolve), which takes the on_hold → back edge",
    ("POST", "/dispatches/{dispatch_id}/exceptions"): "EXCEPTIONS: its creation edge",
    ("POST", "/exceptions/{exception_id}/acknowledge"):
        "EXCEPTIONS: any role that may own one; the domain then admits only its owner or a "
        "supervisor",
    ("POST", "/exceptions/{exception_id}/resolve"):
        "EXCEPTIONS: any role that may own one; the domain then admits only its owner or a "
        "supervisor",
    ("POST", "/approvals/{approval_id}/approve"):
        "APPROVALS: supervisors; the domain then refuses the one who asked",
    ("POST", "/approvals/{approval_id}/reject"):
        "APPROVALS: supervisors; the domain then refuses the one who asked",
})
