"""Bearer-JWT authentication to a `Principal`, and role checks for FastAPI routes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.config import ServiceSettings
from shared.tokens import (
    ROLES,
    JwksKeys,
    JwksVerifier,
    JwtVerifier,
    Principal,
    TokenVerifier,
    Unauthorized,
)

__all__ = ["ROLES", "JwtVerifier", "Principal", "authenticate", "current_principal",
           "make_verifier", "require_roles"]

# Where the app-level door (`shared/web/permissions.py`) leaves the principal it checked.
PRINCIPAL_STATE = "principal"


def make_verifier(settings: ServiceSettings) -> TokenVerifier:
    """The settings' one way of checking tokens: the JWKS in production, else the dev secret."""
    if settings.jwks_url is not None:
        keys = JwksKeys(settings.jwks_url, min_refresh_s=settings.jwks_min_refresh_s,
                        max_age_s=settings.jwks_max_age_s)
        return JwksVerifier(keys, algorithms=settings.algorithms, issuer=settings.jwt_issuer,
                            audience=settings.jwt_audience)
    assert settings.jwt_secret is not None  # nosec B101 # narrows a type: settings refuse neither
    return JwtVerifier(settings.jwt_secret.get_secret_value(), issuer=settings.jwt_issuer,
                       audience=settings.jwt_audience)


async def authenticate(verifier: TokenVerifier, authorization: str | None) -> Principal:
    """The principal of an `Authorization` header, or `Unauthorized` saying why not."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token")
    return await verifier.authenticate(token.strip())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, {"WWW-Authenticate": "Bearer"})


_bearer = HTTPBearer(auto_error=False)


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """FastAPI dependency: 401 without a valid bearer token."""
    checked = getattr(request.state, PRINCIPAL_STATE, None)
    if isinstance(checked, Principal):
        return checked  # the door verified this request's token already
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("missing bearer token")
    verifier: TokenVerifier = request.app.state.jwt
    try:
        return await verifier.authenticate(credentials.credentials)
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
