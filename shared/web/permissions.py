"""Who may call which route: one matrix per service, enforced at the door and tested cell by cell.

Each service declares its `Permissions` in `services/<name>/permissions.py`: every route
(method + path template) → the roles of `shared.tokens.ROLES` that may call it at all. The
door below answers 401 (no or bad token) or 403 (no allowed role) before the route runs, so a
refused request writes nothing. The domain's own checks still decide the finer questions
(which role may take which edge of a workflow); the matrix only keeps everyone else out.

`tests/integration/test_authorisation_matrix.py` calls every cell with a token of that role.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.auth import PRINCIPAL_STATE, authenticate
from shared.tokens import ROLES, TokenVerifier, Unauthorized
from shared.web.problems import problem

Route = tuple[str, str]  # (HTTP method, path template as FastAPI declares it)

# Probes, metrics and documents every service serves to anyone, as before there was a matrix.
PUBLIC_PATHS = frozenset({
    "/healthz", "/readyz", "/metrics", "/asyncapi.json",
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
})
EVERY_ROLE = frozenset(ROLES)


class MatrixMismatch(Exception):
    """The routes an app serves and the routes its matrix names differ (the app must not start)."""


@dataclass(frozen=True)
class Permissions:
    """A service's matrix: each non-public route → the roles allowed to call it."""

    service: str
    routes: Mapping[Route, frozenset[str]]
    # Why a route's roles are what they are, for the reader of the table and its test.
    notes: Mapping[Route, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for (method, path), roles in self.routes.items():
            unknown = roles - EVERY_ROLE
            if unknown:
                raise ValueError(f"{self.service} {method} {path}: unknown roles {sorted(unknown)}")
            if method != method.upper() or path in PUBLIC_PATHS:
                raise ValueError(f"{self.service} {method} {path}: not a protectable route")

    def allowed(self, method: str, path: str) -> frozenset[str]:
        """The roles that may call the route (a route not in the matrix: nobody)."""
        return self.routes.get((method, path), frozenset())

    def cells(self) -> Iterator[tuple[str, str, str, bool]]:
        """Every (method, path, role, allowed) of the matrix, in a stable order."""
        for (method, path), roles in sorted(self.routes.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            for role in ROLES:
                yield method, path, role, role in roles

    def check_covers(self, routes: Iterable[BaseRoute],
                     documented: Iterable[Route] = ()) -> None:
        """Raise `MatrixMismatch` unless the matrix names exactly the service's non-public routes.

        `routes` are the service's own (its routers'); `documented` is what the app's OpenAPI
        document lists, so that a route added to the app some other way is caught as well.
        """
        served = set(protected_routes(routes)) | {r for r in documented if r[1] not in PUBLIC_PATHS}
        missing = sorted(served - set(self.routes))
        stale = sorted(set(self.routes) - served)
        if missing or stale:
            raise MatrixMismatch(
                f"{self.service}: routes without a permissions entry: "
                f"{[' '.join(r) for r in missing]}; entries for routes it does not serve: "
                f"{[' '.join(r) for r in stale]} (services/{self.service}/permissions.py)"
            )


def protected_routes(routes: Iterable[BaseRoute]) -> Iterator[Route]:
    """(method, path) of every route that is not public; HEAD rides along with GET."""
    for route in routes:
        path = getattr(route, "path", None)
        methods: set[str] = getattr(route, "methods", None) or set()
        if path is None or path in PUBLIC_PATHS:
            continue
        for method in sorted(methods - {"HEAD"} if "GET" in methods else methods):
            yield method, path


class Door:
    """ASGI middleware: the matched route's matrix entry decides before anything else runs.

    It sits outside FastAPI's routing so that a refused request's body is never read or parsed
    (an upload from a caller without a token costs us nothing); it matches the request against
    the service's own routes, which the matrix covers. Requests that match none pass through,
    to be answered by the public routes or 404/405 by the router.
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute], permissions: Permissions,
                 verifier: TokenVerifier) -> None:
        self.app = app
        self.routes = routes
        self.permissions = permissions
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._matched(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        allowed = self.permissions.allowed(method, route)
        authorization = _header(scope, b"authorization")
        try:
            principal = await authenticate(self.verifier, authorization)
        except Unauthorized as exc:
            await problem(401, str(exc), kind="unauthorized",
                          headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if not principal.has_any(allowed):
            detail = (f"{method} {route} needs one of the roles {sorted(allowed)}; "
                      f"token has {sorted(principal.roles)}")
            await problem(403, detail, kind="forbidden")(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        await self.app(scope, receive, send)

    def _matched(self, scope: Scope) -> str | None:
        """The path template of the protected route this request is for, if any."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                path: str | None = getattr(route, "path", None)
                return None if path in PUBLIC_PATHS else path
        return None


def documented_routes(openapi: Mapping[str, Any]) -> Iterator[Route]:
    """(method, path) of every operation an OpenAPI document lists."""
    for path, operations in openapi.get("paths", {}).items():
        for method in operations:
            if method in ("get", "put", "post", "delete", "patch", "options", "head", "trace"):
                yield method.upper(), path


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), None)
