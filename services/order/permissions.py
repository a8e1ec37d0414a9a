"""Who may call each order route at all; the workflow table decides the rest (see the notes)."""

from __future__ import annotations

from services.order.domain import Status, person_roles_for_target
from shared.web import dead_letters
from shared.web.permissions import EVERY_ROLE, Permissions

# Writes come from the order workflow table: whoever may move some order into the target.
PERMISSIONS = Permissions("order", {
    ("POST", "/orders"): person_roles_for_target(Status.RECEIVED),
    ("POST", "/orders/{order_id}/confirm"): person_roles_for_target(Status.CONFIRMED),
    ("POST", "/orders/{order_id}/cancel"): person_roles_for_target(Status.CANCELLED),
    ("GET", "/orders"): EVERY_ROLE,
    ("GET", "/orders/{order_id}"): EVERY_ROLE,
    ("GET", "/orders/{order_id}/history"): EVERY_ROLE,
    ("GET", "/timeline"): EVERY_ROLE,
    **dead_letters.PERMISSIONS,
}, notes={
    ("POST", "/orders"): "WORKFLOW: the creation edge into received",
    ("POST", "/orders/{order_id}/confirm"): "WORKFLOW: edges into confirmed",
    ("POST", "/orders/{order_id}/cancel"): "WORKFLOW: edges into cancelled",
})
