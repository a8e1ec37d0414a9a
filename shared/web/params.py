"""Bounded query and path parameters, declared once for every service's routes.

PostgreSQL's `integer` and a sane `OFFSET` stop far below what Python's `int` can hold, and its
`text` refuses NUL bytes: a parameter the database cannot take must be refused at the door as a
422 naming it, not reach the database and come back as a 500.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

# The largest PostgreSQL `integer`; ids, versions and line numbers are stored as one.
MAX_INT = 2**31 - 1
MAX_OFFSET = MAX_INT
DEFAULT_TEXT_LENGTH = 200
# No C0 control characters (NUL above all: PostgreSQL text cannot hold it) and no DEL.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
PRINTABLE_HINT = "must not contain control characters (such as NUL)"
# Free text (a reason, a description) may run over lines and hold tabs, nothing else of C0.
PRINTABLE_MULTILINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

Offset = Annotated[
    int, Query(ge=0, le=MAX_OFFSET, description=f"rows to skip (at most {MAX_OFFSET})")
]


def limit(cap: int = 500) -> Any:
    """A `limit` query parameter: 1 to `cap` rows."""
    return Query(ge=1, le=cap, description=f"rows to return (1 to {cap})")


def integer(description: str | None = None, *, ge: int = 1, le: int = MAX_INT) -> Any:
    """An integer query parameter the database can hold."""
    return Query(ge=ge, le=le, description=description)


def text(description: str | None = None, *, max_length: int = DEFAULT_TEXT_LENGTH) -> Any:
    """A text query parameter: at most `max_length` characters, no control characters."""
    return Query(max_length=max_length, pattern=PRINTABLE, description=description)
