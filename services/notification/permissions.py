"""Who may call each notification route."""

from __future__ import annotations

from shared.web import dead_letters
from shared.web.permissions import EVERY_ROLE, Permissions

# Observed events cross every service and journey: for ops and supervisors, not every reader.
PERMISSIONS = Permissions("notification", {
    ("GET", "/events"): frozenset({"ops", "supervisor"}),
    ("GET", "/rules"): frozenset({"ops", "supervisor"}),
    ("GET", "/deliveries"): frozenset({"ops", "supervisor"}),
    # An order's deliveries name their recipients: the same readers as /deliveries.
    ("GET", "/timeline"): frozenset({"ops", "supervisor"}),
    # Ops operate the channels: sending a failed delivery again is theirs.
    ("POST", "/deliveries/{delivery_id}/retry"): frozenset({"ops"}),
    # The directory holds addresses and webhook secrets: ops load it, supervisors may read it.
    ("GET", "/people"): frozenset({"ops", "supervisor"}),
    ("POST", "/people/imports"): frozenset({"ops"}),
    # Everyone has an inbox; each sees only their own (by user and roles).
    ("GET", "/inbox"): EVERY_ROLE,
    ("POST", "/inbox/{delivery_id}/read"): EVERY_ROLE,
    **dead_letters.PERMISSIONS,
})
