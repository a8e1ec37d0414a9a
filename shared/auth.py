"""Bearer-JWT authentication to a `Principal`, and role checks for FastAPI routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.tokens import ROLES, JwtVerifier, Principal, Unauthorized

__all__ = ["ROLES", "JwtVerifier", "Principal", "current_principal", "require_roles"]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, {"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: 401 without a valid bearer token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer token")
    verifier: JwtVerifier = request.app.state.jwt
    try:
        return verifier.verify(credentials.credentials)
    except Unauthorized as exc:
        raise _unauthorized(str(exc)) from exc


def require_roles(*roles: str) -> Callable[..., Any]:
    """FastAPI dependency: 403 unless the caller holds one of `roles`."""

    async def check(principal: Annotated[Principal, Depends(current_principal)]) -> Principal:
        if not principal.has_any(roles):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"requires one of the roles {sorted(roles)}; token has {sorted(principal.roles)}",
            )
        return principal

    return check
