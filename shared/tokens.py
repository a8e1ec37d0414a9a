"""JWTs and principals, free of any web framework (the CLI mints tokens with this)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from shared.contracts.envelope import Actor

ROLES = ("sales", "planner", "warehouse", "shipping", "supervisor", "integration", "ops")


@dataclass(frozen=True)
class Principal:
    """Who is calling and with which roles."""

    sub: str
    roles: frozenset[str]

    def has_any(self, roles: Iterable[str]) -> bool:
        return bool(self.roles.intersection(roles))

    def acting_as(self, allowed: Iterable[str]) -> Actor:
        """The actor recorded in audit rows: the first of the caller's roles the action allows."""
        allowed = list(allowed)
        role = next((r for r in allowed if r in self.roles), None)
        if role is None:
            role = min(self.roles) if self.roles else "none"
        return Actor(id=self.sub, role=role)


class JwtVerifier:
    """HS256 with a shared secret for development; issuer and audience checked when configured."""

    def __init__(self, secret: str, *, issuer: str | None = None, audience: str | None = None) -> None:
        self.secret = secret
        self.issuer = issuer
        self.audience = audience

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise Unauthorized("claim 'roles' must be a list of strings")
        return Principal(sub=str(claims["sub"]), roles=frozenset(roles))

    def issue(self, sub: str, roles: list[str], ttl_s: int = 8 * 3600) -> str:
        """Mint a development token (the `spine token` command uses this)."""
        now = int(time.time())
        claims: dict[str, Any] = {"sub": sub, "roles": roles, "iat": now, "exp": now + ttl_s}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm="HS256")


class Unauthorized(Exception):
    """The token is missing, malformed, expired or not signed by us (HTTP 401)."""
