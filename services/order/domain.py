"""Order domain: the status table, the rules that decide a change, order validation. No I/O."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    RECEIVED = "received"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"


# The order service itself, acting on a message (e.g. an outside sales system that sends an
# order it has already confirmed). No token may claim it: the API strips it from callers.
SYSTEM = "system"


@dataclass(frozen=True)
class Rule:
    """One allowed edge of the order lifecycle: who may take it and what it needs."""

    source: Status | None  # None: the order does not exist yet
    target: Status
    roles: frozenset[str]
    reason_required: bool = False


def _rule(source: Status | None, target: Status, roles: set[str], **kw: Any) -> Rule:
    return Rule(source, target, frozenset(roles), **kw)


# The lifecycle as data. API permissions, the audit trail and the tests read this one table.
TRANSITIONS: dict[tuple[Status | None, Status], Rule] = {
    (r.source, r.target): r
    for r in [
        _rule(None, Status.RECEIVED, {"sales", SYSTEM}),
        _rule(Status.RECEIVED, Status.CONFIRMED, {"sales", "supervisor", SYSTEM}),
        _rule(Status.RECEIVED, Status.CANCELLED, {"sales", "supervisor"}, reason_required=True),
        _rule(Status.CONFIRMED, Status.CANCELLED, {"sales", "supervisor"}, reason_required=True),
    ]
}


def roles_for_target(target: Status) -> frozenset[str]:
    """Every role that may move some order into `target` (for a 403 before state is read)."""
    return frozenset().union(*(r.roles for r in TRANSITIONS.values() if r.target == target))


def person_roles_for_target(target: Status) -> frozenset[str]:
    """The roles a caller's token may use to move an order into `target` (never `system`)."""
    return roles_for_target(target) - {SYSTEM}


def person_roles(roles: Iterable[str]) -> frozenset[str]:
    """A caller's roles as the table sees them: a token never acts as the service itself."""
    return frozenset(roles) - {SYSTEM}


def acting_role(target: Status, roles: Iterable[str]) -> str:
    """The role the audit names: the first of the caller's roles the table allows for `target`."""
    held = set(roles)
    allowed = sorted(roles_for_target(target) & held)
    if allowed:
        return allowed[0]
    return min(held) if held else "none"


# ---------------------------------------------------------------------------- errors


class OrderError(Exception):
    """Base of the domain's refusals; each maps to one HTTP status at the edge."""


class NotFound(OrderError):
    pass


class Forbidden(OrderError):
    pass


class StaleVersion(OrderError):
    pass


class NotAllowedFromState(OrderError):
    pass


class ReasonRequired(OrderError):
    pass


class InvalidOrder(OrderError):
    """The order breaks the rules; `reasons` are sentences a person at the sales desk can act on."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class ExternalRefTaken(OrderError):
    def __init__(self, external_ref: str, order_id: str) -> None:
        super().__init__(f"external_ref {external_ref!r} already names order {order_id}")
        self.order_id = order_id


# ---------------------------------------------------------------------------- entities


# Quantities are kept to three decimals (numeric(14, 3)); every copy of a line shows that scale,
# so an event built from a fresh submission reads the same as one built from the database.
QUANTITY_STEP = Decimal("0.001")


@dataclass(frozen=True)
class OrderLine:
    line_no: int
    product_id: str
    quantity: Decimal
    uom: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantity", Decimal(self.quantity).quantize(QUANTITY_STEP))


@dataclass(frozen=True)
class OrderDraft:
    """An order as someone asked for it, before it is checked against the replicas."""

    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: Mapping[str, str]
    lines: Sequence[OrderLine]
    external_ref: str | None = None
    source: str | None = None

    @property
    def product_ids(self) -> list[str]:
        return sorted({line.product_id for line in self.lines})


@dataclass
class Order:
    id: uuid.UUID
    status: Status
    version: int
    customer_id: str
    requested_ship_date: date
    priority: str
    ship_to: dict[str, str]
    lines: list[OrderLine]
    correlation_id: uuid.UUID
    created_by: str
    source: str | None = None
    external_ref: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class CustomerReplica:
    id: str
    active: bool


@dataclass(frozen=True)
class ProductReplica:
    id: str
    active: bool
    uom: str


# ---------------------------------------------------------------------------- decisions


def decide(
    order: Order,
    target: Status,
    *,
    roles: frozenset[str],
    expected_version: int | None = None,
    reason: str = "",
) -> Rule:
    """Check one requested status change against the table; raise the first refusal that applies."""
    if not roles & roles_for_target(target):
        raise Forbidden(f"no role of {sorted(roles)} may move an order to {target}")
    if expected_version is not None and expected_version != order.version:
        raise StaleVersion(f"order {order.id} is at version {order.version}, not {expected_version}")
    rule = TRANSITIONS.get((order.status, target))
    if rule is None:
        raise NotAllowedFromState(f"order {order.id} is {order.status}; it cannot become {target}")
    if not rule.roles & roles:
        raise Forbidden(
            f"{order.status} → {target} needs one of {sorted(rule.roles)}; caller has {sorted(roles)}"
        )
    if rule.reason_required and not reason.strip():
        raise ReasonRequired(f"a reason is required for {order.status} → {target}")
    return rule


def decide_creation(roles: frozenset[str]) -> Rule:
    """May a caller with `roles` create an order? Raises `Forbidden` if not."""
    rule = TRANSITIONS[(None, Status.RECEIVED)]
    if not rule.roles & roles:
        raise Forbidden(f"creating an order needs one of {sorted(rule.roles)}; "
                        f"caller has {sorted(roles)}")
    return rule


def check_order(
    draft: OrderDraft,
    customer: CustomerReplica | None,
    products: Mapping[str, ProductReplica],
) -> list[str]:
    """Everything wrong with `draft` given what the ERP told us; empty when it may be accepted."""
    reasons: list[str] = []
    if draft.ship_to.get("country") not in ISO_3166_ALPHA_2:
        reasons.append(
            f"ship_to.country: {draft.ship_to.get('country')!r} is not an ISO 3166 country code"
        )
    refs = [LineRef(line.line_no, line.product_id, line.uom) for line in draft.lines]
    return reasons + check_references(draft.customer_id, refs, customer, products)


@dataclass(frozen=True)
class LineRef:
    """What a line names, even when the rest of the line broke the contract."""

    line_no: int | None
    product_id: str
    uom: str | None


def check_references(
    customer_id: str | None,
    lines: Sequence[LineRef],
    customer: CustomerReplica | None,
    products: Mapping[str, ProductReplica],
) -> list[str]:
    """What is wrong with the customer and products an order names, against the ERP replicas."""
    reasons: list[str] = []
    if customer_id is not None:
        if customer is None:
            reasons.append(f"customer {customer_id} is unknown")
        elif not customer.active:
            reasons.append(f"customer {customer_id} is inactive")
    for line in sorted(lines, key=lambda x: (x.line_no is None, x.line_no or 0)):
        where = f"line {line.line_no}" if line.line_no is not None else "a line"
        product = products.get(line.product_id)
        if product is None:
            reasons.append(f"{where}: product {line.product_id} is unknown")
            continue
        if not product.active:
            reasons.append(f"{where}: product {line.product_id} is inactive")
        if line.uom is not None and product.uom != line.uom:
            reasons.append(
                f"{where}: unit {line.uom} does not match product "
                f"{line.product_id}, which is sold in {product.uom}"
            )
    return reasons


def references_in(data: Mapping[str, object]) -> tuple[str | None, list[LineRef]]:
    """The customer and products a submission names, read leniently from contract-breaking data."""
    customer_id = data.get("customer_id")
    refs: list[LineRef] = []
    lines = data.get("lines")
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, dict) and isinstance(line.get("product_id"), str) and line["product_id"]:
            line_no = line.get("line_no")
            uom = line.get("uom")
            refs.append(LineRef(line_no if isinstance(line_no, int) else None, line["product_id"],
                                uom if isinstance(uom, str) else None))
    return (customer_id if isinstance(customer_id, str) and customer_id else None), refs


def provenance_problems(source: str, producer: str) -> list[str]:
    """An outside system may submit orders only under its own name (ext.<itself>.…)."""
    if producer == source:
        return []
    return [
        f"producer {producer!r} may not submit orders for system {source!r}: "
        f"an outside system publishes only under ext.<its own name>"
    ]


# ---------------------------------------------------------------------------- readable reasons

# What a person should read for a contract problem, by field path; better than a regex echo.
_FIELD_HINTS = {
    "ship_to.country": "must be a two-letter ISO 3166 code",
    "requested_ship_date": "must be a date like 2026-12-01",
    "priority": "must be normal or rush",
}


def readable_reasons(errors: Iterable[Mapping[str, Any]], data: Any) -> list[str]:
    """Turn contract validation errors (pydantic's `errors()`) into sentences about the order.

    Lines are named by their `line_no` where the sender gave one, not by list position.
    """
    reasons: list[str] = []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        sentence = _sentence_for(loc, err, data)
        if sentence not in reasons:
            reasons.append(sentence)
    return reasons or ["the order does not match the contract"]


def _sentence_for(loc: tuple[Any, ...], err: Mapping[str, Any], data: Any) -> str:
    if len(loc) >= 2 and loc[0] == "lines" and isinstance(loc[1], int):
        who = _line_name(data, loc[1])
        rest = ".".join(str(p) for p in loc[2:])
        if not rest:
            return f"{who}: must be an object with line_no, product_id, quantity and uom"
        return f"{who}: {rest} {_message(rest, err)}"
    path = ".".join(str(p) for p in loc)
    if not path:
        return f"the order {_message('', err)}"
    return f"{path}: {_message(path, err)}"


def _line_name(data: Any, index: int) -> str:
    try:
        line_no = data["lines"][index]["line_no"]
    except (KeyError, IndexError, TypeError):
        line_no = None
    if isinstance(line_no, int) and not isinstance(line_no, bool):
        return f"line {line_no}"
    return f"line at position {index + 1}"


def _message(path: str, err: Mapping[str, Any]) -> str:
    kind = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if path in _FIELD_HINTS and kind != "missing":
        return _FIELD_HINTS[path]
    if kind == "greater_than":
        return f"must be greater than {ctx.get('gt')}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else (
            f"must have at least {ctx.get('min_length')} characters")
    if kind == "string_too_long":
        return f"must have at most {ctx.get('max_length')} characters"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "decimal_max_places":
        return f"must have at most {ctx.get('decimal_places')} decimal places"
    if kind == "decimal_max_digits":
        return f"must have at most {ctx.get('max_digits')} digits"
    if kind in ("decimal_parsing", "decimal_type", "float_parsing"):
        return "must be a number written as a decimal string, e.g. \"12.5\""
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_parsing", "bool_type"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be text"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return "must be an object"
    if kind == "list_type":
        return "must be a list"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    message = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


# ISO 3166-1 alpha-2, the officially assigned codes (user-assigned ones such as XK are not).
# A block of text reads and diffs far better than 249 quoted literals.
ISO_3166_ALPHA_2 = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """.split()  # noqa: SIM905
)
