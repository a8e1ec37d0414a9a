"""Who may call each notification route."""

from __future__ import annotations

from shared.web import dead_letters
from shared.web.permissions import Permissions

# Observed events cross every service and journey: for ops and supervisors, not every reader.
PERMISSIONS = Permissions("notification", {
    ("GET", "/events"): frozenset({"ops", "supervisor"}),
    **dead_letters.PERMISSIONS,
})
