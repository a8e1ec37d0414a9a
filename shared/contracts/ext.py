"""Inbound contracts from outside plant systems (`ext.<system>.*`)."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, Field, field_validator, model_validator

from shared.contracts.envelope import Contract

SYSTEM_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class ShipTo(Contract):
    name: str = Field(min_length=1, max_length=200)
    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=100)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")


class OrderLine(Contract):
    line_no: int = Field(ge=1)
    product_id: str = Field(min_length=1, max_length=64)
    quantity: Decimal = Field(gt=0, max_digits=14, decimal_places=3)
    uom: str = Field(min_length=1, max_length=16)


class OrderSubmitted(Contract):
    """`ext.<system>.order.submitted`: an outside sales system hands an order to Spine."""

    external_ref: str = Field(min_length=1, max_length=100)
    customer_id: str = Field(min_length=1, max_length=64)
    requested_ship_date: date
    priority: Literal["normal", "rush"] = "normal"
    ship_to: ShipTo
    lines: list[OrderLine] = Field(min_length=1, max_length=500)
    confirmed: bool = False

    @field_validator("lines")
    @classmethod
    def _line_numbers_unique(cls, lines: list[OrderLine]) -> list[OrderLine]:
        numbers = [line.line_no for line in lines]
        if len(numbers) != len(set(numbers)):
            raise ValueError("line_no must be unique within an order")
        return lines


class ProductionException(Contract):
    """`ext.<system>.production.exception`: the shop floor reports a problem with an order.

    The order is named by its `order_external_ref` (as the same system submitted it) or its
    Spine `order_id`. Without `owner` the exception goes to `role:planner`; without `due_at` it
    is due four hours after it arrives.
    """

    order_external_ref: str | None = Field(default=None, min_length=1, max_length=100)
    order_id: str | None = Field(default=None, min_length=1, max_length=100)
    reason_code: str = Field(default="production_delay", min_length=1, max_length=64)
    description: str = Field(default="", max_length=2000)
    blocking: bool = False
    owner: str | None = Field(default=None, min_length=1, max_length=200)
    due_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _names_an_order(self) -> ProductionException:
        if not (self.order_external_ref or self.order_id):
            raise ValueError("either order_external_ref or order_id is required")
        return self


class DispatchProgress(Contract):
    """`ext.<system>.dispatch.progress`: a plant system (WMS, TMS) moved a dispatch.

    Applied with the role configured for the system (SPINE_SYSTEM_ROLES), through the same table
    and checks as a person's move; `evidence` as the transitions route takes it.
    """

    dispatch_id: str | None = Field(default=None, min_length=1, max_length=100)
    order_external_ref: str | None = Field(default=None, min_length=1, max_length=100)
    to: str = Field(min_length=1, max_length=32)
    evidence: dict[str, object] = Field(default_factory=dict)
    reason: str = Field(default="", max_length=2000)

    @model_validator(mode="after")
    def _names_a_dispatch(self) -> DispatchProgress:
        if not (self.dispatch_id or self.order_external_ref):
            raise ValueError("either dispatch_id or order_external_ref is required")
        return self


def source_of(routing_key: str) -> str | None:
    """The outside system named by an `ext.<system>.…` routing key, or None."""
    parts = routing_key.split(".")
    if len(parts) >= 3 and parts[0] == "ext" and SYSTEM_NAME.match(parts[1]):
        return parts[1]
    return None
