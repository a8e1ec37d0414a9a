"""JWTs and principals, free of any web framework (the CLI mints tokens with this).

Two modes, never mixed: development signs and checks HS256 with a shared secret
(`JwtVerifier`); production checks RS256/ES256 tokens against the identity provider's
published keys (`JwksVerifier`). Each pins its algorithms, so a token cannot pick its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
from jwt import PyJWK

from shared.contracts.envelope import Actor
from shared.domain import ROLES as ROLES  # the plant's roles, re-exported where tokens are read

log = logging.getLogger("spine.tokens")


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
        """The token's principal, or `Unauthorized` saying why not."""
        _require_algorithm(token, DEVELOPMENT_ALGORITHMS)
        return _principal(token, self.secret, DEVELOPMENT_ALGORITHMS, self.issuer, self.audience)

    async def authenticate(self, token: str) -> Principal:
        """`verify`, behind the interface every verifier shares."""
        return self.verify(token)

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


class TokenVerifier(Protocol):
    """What the HTTP edge needs: a bearer token in, a principal (or `Unauthorized`) out."""

    async def authenticate(self, token: str) -> Principal: ...


DEVELOPMENT_ALGORITHMS = ("HS256",)
# Asymmetric only: with a symmetric algorithm the published public key would be the secret.
JWKS_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                             "ES256", "ES384", "ES512", "EdDSA"})


def _require_algorithm(token: str, allowed: Sequence[str]) -> dict[str, Any]:
    """The token's header, refused before any key is looked up if it names another algorithm."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    alg = header.get("alg")
    if alg not in allowed:
        raise Unauthorized(f"token algorithm {alg!r} is not accepted here (only {', '.join(allowed)})")
    return header


def _principal(token: str, key: Any, algorithms: Sequence[str], issuer: str | None,
               audience: str | None) -> Principal:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=list(algorithms),
            issuer=issuer,
            audience=audience,
            options={"require": ["sub", "exp"], "verify_aud": audience is not None},
        )
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired") from exc
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    roles = claims.get("roles", [])
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized("claim 'roles' must be a list of strings")
    return Principal(sub=str(claims["sub"]), roles=frozenset(roles))


class JwksKeys:
    """The identity provider's signing keys (`PyJWK`) by `kid`, fetched from its JWKS URL and cached.

    A token naming an unknown `kid` (the provider rotated its keys) makes one fetch, but never
    more than one per `min_refresh_s`: otherwise anyone could make every request fetch by
    sending made-up key ids. Keys are also refetched after `max_age_s`, so a withdrawn key stops
    working; if that refetch fails the keys in hand are kept, as the provider is merely down.
    """

    def __init__(self, url: str, *, min_refresh_s: float = 30.0, max_age_s: float = 300.0,
                 timeout_s: float = 5.0) -> None:
        self.url = url
        self.min_refresh_s = min_refresh_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.fetches = 0
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # the last successful fetch
        self._tried_at: float | None = None  # the last attempt, successful or not
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> PyJWK:
        """The key named `kid`, or `Unauthorized` (unknown key, or the keys cannot be fetched)."""
        if kid in self._keys and not self._expired():
            return self._keys[kid]
        async with self._lock:  # concurrent requests for a new kid share one fetch
            if kid not in self._keys or self._expired():
                await self._refresh(kid)
        if kid not in self._keys:
            raise Unauthorized(f"token signed with unknown key {kid!r}")
        return self._keys[kid]

    def _expired(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at > self.max_age_s

    async def _refresh(self, kid: str) -> None:
        now = time.monotonic()
        if self._tried_at is not None and now - self._tried_at < self.min_refresh_s:
            if self._keys:
                return  # unknown kid inside the interval: refused without a fetch
            raise Unauthorized("signing keys unavailable: the JWKS endpoint failed moments ago")
        self._tried_at = now
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
                response = await client.get(self.url, headers={"Accept": "application/json"})
                response.raise_for_status()
                found = _signing_keys(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %s", self.url, exc)
            if self._keys and kid in self._keys:
                return  # expired but usable: the provider is down, not the key withdrawn
            raise Unauthorized(f"signing keys unavailable: {exc.__class__.__name__} "
                               f"fetching the JWKS") from exc
        self._keys = found
        self._fetched_at = time.monotonic()


def _signing_keys(document: Any) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document by `kid`; a key we cannot use is skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    found: dict[str, PyJWK] = {}
    for raw in document["keys"]:
        if not isinstance(raw, dict) or not raw.get("kid") or raw.get("use", "sig") != "sig":
            continue
        try:
            # Only with the algorithm the provider declares, if it declares one.
            found[str(raw["kid"])] = PyJWK(raw, algorithm=raw.get("alg"))
        except jwt.PyJWTError as exc:
            log.warning("JWKS key %r skipped: %s", raw.get("kid"), exc)
    return found


class JwksVerifier:
    """Production: tokens signed by the identity provider's keys; issuer and audience when set."""

    def __init__(self, keys: JwksKeys, *, algorithms: Iterable[str] = ("RS256", "ES256"),
                 issuer: str | None = None, audience: str | None = None) -> None:
        self.algorithms = tuple(algorithms)
        refused = set(self.algorithms) - JWKS_ALGORITHMS
        if refused:
            raise ValueError(f"not asymmetric algorithms, refused with a JWKS: {sorted(refused)}")
        self.keys = keys
        self.issuer = issuer
        self.audience = audience

    async def authenticate(self, token: str) -> Principal:
        """The token's principal, or `Unauthorized` saying why not."""
        header = _require_algorithm(token, self.algorithms)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token names no signing key (kid)")
        jwk = await self.keys.key(kid)
        # A key is used only with its own algorithm (declared, or implied by its type and curve).
        if jwk.algorithm_name != header["alg"]:
            raise Unauthorized(f"key {kid!r} is for {jwk.algorithm_name}, "
                               f"the token says {header['alg']}")
        return _principal(token, jwk.key, [header["alg"]], self.issuer, self.audience)
