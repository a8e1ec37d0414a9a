"""The one place where erp_adapter domain events become wire contracts (`erp.*`)."""

from __future__ import annotations

from typing import Any

from services.erp_adapter.confirmations import Confirmation, ConfirmationFailed, ConfirmationPosted
from services.erp_adapter.conflicts import ConflictDetected
from services.erp_adapter.domain import Customer, RecordUpserted
from shared.contracts import erp as contracts
from shared.contracts.erp import (
    CONFIRMATION_FAILED,
    CONFIRMATION_POSTED,
    CONFLICT_DETECTED,
    CUSTOMER_UPSERTED,
    PRODUCT_UPSERTED,
    CustomerUpserted,
    ProductUpserted,
)
from shared.domain import DomainEvent
from shared.uow import WireEvent


def to_wire(event: DomainEvent) -> WireEvent | None:
    """The `erp.*` event a domain event publishes; None for those that stay inside."""
    if isinstance(event, RecordUpserted):
        record = event.record
        if isinstance(record, Customer):
            customer = CustomerUpserted(customer_id=record.customer_id, name=record.name,
                                        active=record.active, version=event.version)
            return WireEvent(CUSTOMER_UPSERTED, customer.model_dump(mode="json"))
        product = ProductUpserted(product_id=record.product_id, name=record.name, uom=record.uom,
                                  active=record.active, version=event.version)
        return WireEvent(PRODUCT_UPSERTED, product.model_dump(mode="json"))
    if isinstance(event, ConflictDetected):
        c = event.conflict
        detected = contracts.ConflictDetected(
            conflict_id=str(c.id), entity=c.entity, entity_id=c.entity_id, field=c.field,
            erp_value=c.erp_value, spine_value=c.spine_value if c.spine_value_known else None,
            spine_value_known=c.spine_value_known, spine_owner=c.spine_owner,
            order_id=c.order_id, connector=c.connector, reopened=event.reopened,
            occurrences=c.occurrences)
        return WireEvent(CONFLICT_DETECTED, detected.model_dump(mode="json"))
    if isinstance(event, ConfirmationPosted):
        posted = contracts.ConfirmationPosted(**_confirmation(event.confirmation),
                                              response=event.confirmation.response)
        return WireEvent(CONFIRMATION_POSTED, posted.model_dump(mode="json"))
    if isinstance(event, ConfirmationFailed):
        failed = contracts.ConfirmationFailed(**_confirmation(event.confirmation),
                                              last_error=event.confirmation.last_error)
        return WireEvent(CONFIRMATION_FAILED, failed.model_dump(mode="json"))
    return None


def _confirmation(c: Confirmation) -> dict[str, Any]:
    return {"confirmation_id": str(c.id), "idempotency_key": str(c.event_id),
            "kind": c.kind.value, "dispatch_id": c.dispatch_id, "order_id": c.order_id,
            "dispatch_version": c.dispatch_version, "connector": c.connector,
            "status": c.status.value, "attempts": c.attempts}


# Events this service publishes, for the AsyncAPI catalogue.
PUBLISHED: dict[str, type[Any]] = {
    CUSTOMER_UPSERTED: CustomerUpserted,
    PRODUCT_UPSERTED: ProductUpserted,
    CONFLICT_DETECTED: contracts.ConflictDetected,
    CONFIRMATION_POSTED: contracts.ConfirmationPosted,
    CONFIRMATION_FAILED: contracts.ConfirmationFailed,
}
