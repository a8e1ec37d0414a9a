"""Events the erp_adapter owns (`erp.*`): reference data the ERP is master of."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from shared.contracts.envelope import Contract

CUSTOMER_UPSERTED = "erp.customer.upserted"
PRODUCT_UPSERTED = "erp.product.upserted"
CONFLICT_DETECTED = "erp.conflict.detected"
CONFIRMATION_POSTED = "erp.confirmation.posted"
CONFIRMATION_FAILED = "erp.confirmation.failed"


class CustomerUpserted(Contract):
    customer_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    active: bool = True
    version: int = Field(default=1, ge=1, description="per-record version; replicas keep the newest")


class ProductUpserted(Contract):
    product_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    uom: str = Field(min_length=1, max_length=16)
    active: bool = True
    version: int = Field(default=1, ge=1)


class ConflictDetected(Contract):
    """The ERP sent a value for a field a Spine service owns; it was not applied.

    Published when the conflict is first seen, and again when the ERP sends the value after the
    conflict was resolved as `erp_corrected` (`reopened`). Resolve it at the erp_adapter's
    `POST /conflicts/{conflict_id}/resolve`.
    """

    conflict_id: str
    entity: str
    entity_id: str
    field: str = Field(description="`lines[<line_no>].<field>` for a field of one line")
    erp_value: Any = Field(description="what the ERP sent (any JSON value)")
    spine_value: Any = Field(default=None, description="Spine's value where the adapter knows it")
    spine_value_known: bool = Field(description="false: the adapter keeps no copy of it; ask "
                                                "spine_owner")
    spine_owner: str = Field(description="the Spine service that owns the field")
    order_id: str | None = None
    connector: str = Field(description="how the record came in: file-import, http-records")
    reopened: bool = False
    occurrences: int = Field(default=1, ge=1)


class ConfirmationChanged(Contract):
    confirmation_id: str
    idempotency_key: str = Field(description="the dispatch event confirmed: what the ERP dedups on")
    kind: str = Field(description="shipped or corrected")
    dispatch_id: str
    order_id: str
    dispatch_version: int = Field(ge=1)
    connector: str
    status: str
    attempts: int = Field(ge=0)


class ConfirmationPosted(ConfirmationChanged):
    """A delivery confirmation reached the ERP (`status` acknowledged, or posted while an
    acknowledgement file is awaited)."""

    response: dict[str, Any] | None = None


class ConfirmationFailed(ConfirmationChanged):
    """A delivery confirmation was given up on; `POST /confirmations/{id}/retry` sends it again."""

    last_error: str | None = None
