"""Every refusal as an RFC 9457 `application/problem+json` response, the same in every service.

A body has `type`, `title`, `status` and `detail`, plus `problems` (one readable line per field
or rule that failed) where there are several, and whatever the refusal adds (`extra`).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.web.params import PRINTABLE, PRINTABLE_HINT
from shared.workflow import (
    Conflict,
    Forbidden,
    GuardFailed,
    InvalidInput,
    NotAllowedFromState,
    NotFound,
    Refusal,
    StaleVersion,
    UnsupportedFormat,
)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://spine.dev/problems/"

# Most specific first: the first class a refusal is an instance of decides.
_STATUS: list[tuple[type[Refusal], int, str]] = [
    (NotFound, 404, "not-found"),
    (Forbidden, 403, "forbidden"),
    (StaleVersion, 412, "stale-version"),
    (NotAllowedFromState, 409, "not-allowed-from-state"),
    (GuardFailed, 409, "guard-failed"),
    (Conflict, 409, "conflict"),
    (UnsupportedFormat, 415, "unsupported-format"),
    (InvalidInput, 422, "invalid-input"),
]
_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 409: "Conflict", 412: "Precondition failed",
           413: "Content too large", 415: "Unsupported media type", 422: "Unprocessable content",
           428: "Precondition required", 429: "Too many requests", 503: "Service unavailable"}


class Problem(BaseModel):
    """The body of every 4xx answer (RFC 9457)."""

    type: str = Field(description="a URI naming the kind of problem")
    title: str
    status: int
    detail: str = Field(description="what went wrong, for a person")
    problems: list[str] | None = Field(default=None, description="one line per failed field or rule")


def problem(status: int, detail: str, *, kind: str | None = None, problems: list[str] | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """A problem+json response."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + kind if kind else "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if problems is not None:
        body["problems"] = problems
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_of(refusal: Refusal) -> tuple[int, str]:
    return next(((code, kind) for cls, code, kind in _STATUS if isinstance(refusal, cls)),
                (400, "refused"))


def install_problem_responses(app: FastAPI) -> None:
    """Refusals, invalid requests and HTTP errors all answer as problem+json."""

    @app.exception_handler(Refusal)
    async def refused(_: Request, exc: Refusal) -> JSONResponse:
        code, kind = status_of(exc)
        problems = exc.problems if isinstance(exc, InvalidInput) else None
        return problem(code, exc.detail, kind=kind, problems=problems,
                       error=exc.__class__.__name__, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err['loc'] if p != 'body') or 'body'}: {_reason(err)}"
            for err in exc.errors()
        ]
        return problem(422, "invalid request", kind="invalid-request", problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return problem(exc.status_code, detail, headers=dict(exc.headers or {}) or None)


def _reason(error: Any) -> str:
    # The pattern itself means nothing to the person who sent a NUL byte.
    if error.get("type") == "string_pattern_mismatch" and \
            (error.get("ctx") or {}).get("pattern") == PRINTABLE:
        return PRINTABLE_HINT
    return str(error["msg"])


# The answers routes document, so the OpenAPI document says what the service really sends.
def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each code with the problem body and its meaning."""
    # Under problem+json alone, the media type they are sent as: `model=` would file the schema
    # under application/json and leave the problem+json answer unchecked.
    return {code: {"description": _TITLES.get(code, "Error"),
                   "content": {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}},
                   **({"headers": _RETRY_AFTER} if code == 429 else {})} for code in codes}


_RETRY_AFTER = {"Retry-After": {"description": "seconds until the caller may send again",
                                "schema": {"type": "integer", "minimum": 1}}}


_PROBLEM_SCHEMA = Problem.model_json_schema()
