"""Typed FastAPI dependencies: the caller, the service's unit of work, the version read."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.auth import ROLES, Principal, current_principal, require_roles
from shared.web.params import MAX_INT

PrincipalDep = Annotated[Principal, Depends(current_principal)]
# Any of the plant's roles may read; writes check their own roles in the domain.
ReaderDep = Annotated[Principal, Depends(require_roles(*ROLES))]


def unit_of_work(request: Request) -> Any:
    """The unit of work the composition root put on the app (`app.state.uow`)."""
    return request.app.state.uow


def engine(request: Request) -> AsyncEngine:
    """The service's engine, for reads (`views.py`)."""
    found: AsyncEngine = request.app.state.runtime.engine
    return found


EngineDep = Annotated[AsyncEngine, Depends(engine)]


IfMatchHeader = Annotated[
    str | None,
    Header(max_length=100, description="the ETag (version) you read; a stale one is refused with 412"),
]


def parse_if_match(value: str | None, *, required: bool) -> int | None:
    """The version an `If-Match` header names; 428 when required and missing, 400 when not a version."""
    if value is None:
        if required:
            raise HTTPException(428, "If-Match is required: send the ETag (version) you last read")
        return None
    text = value.strip().removeprefix("W/").strip('"')
    # ASCII digits only (str.isdigit() takes '²', which int() refuses) and no more than a
    # stored version can hold.
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_INT:
        raise HTTPException(400, f"If-Match {value!r} is not a version")
    return int(text)


def with_etag(found: dict[str, Any] | None, response: Response, *, missing: str) -> dict[str, Any]:
    """A versioned resource as the answer, its version as the `ETag`; 404 saying `missing` if None."""
    if found is None:
        raise HTTPException(404, missing)
    response.headers["ETag"] = f'"{found["version"]}"'
    return found
