"""A submission that breaks its contract, read for what a person can act on (the message edge).

Pydantic's validation errors become sentences about the order, and the customer and products
such a submission still names are read leniently, so that its `order.rejected` can list the
replica problems too, in one answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from services.order.domain import LineRef


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
