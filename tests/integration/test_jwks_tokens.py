"""Production tokens: RS256/ES256 checked against keys served by a real (local) JWKS endpoint.

The endpoint is a `http.server` thread on a free loopback port, serving whatever key set the
test puts in it and counting its fetches. The HTTP checks go through the same door every
service installs (`shared/web/permissions.py`), in front of a one-route app.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import APIRouter, FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from shared.tokens import JwksKeys, JwksVerifier, JwtVerifier, Principal, Unauthorized
from shared.web.permissions import Door, Permissions, documented_routes
from shared.web.problems import install_problem_responses

ISSUER = "https://idp.plant.example"
AUDIENCE = "spine"


@dataclass
class SigningKey:
    kid: str
    private: Any
    alg: str

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS256")

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg.startswith("RS") else ECAlgorithm
        found: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**found, "kid": self.kid, "use": "sig", "alg": self.alg}

    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))

    def token(self, *, kid: str | None = None, **overrides: Any) -> str:
        return jwt.encode(claims(**overrides), self.private, algorithm=self.alg,
                          headers={"kid": kid or self.kid})


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    found = {"sub": "u-42", "roles": ["planner"], "iss": ISSUER, "aud": AUDIENCE,
             "iat": now, "exp": now + 300}
    found.update(overrides)
    return {k: v for k, v in found.items() if v is not None}


def hand_made(header: dict[str, Any], payload: dict[str, Any], signature: bytes) -> str:
    """A token assembled by hand, as an attacker would (pyjwt refuses to sign these)."""
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    signing_input = f"{part(json.dumps(header).encode())}.{part(json.dumps(payload).encode())}"
    return f"{signing_input}.{part(signature)}" if signature else f"{signing_input}."


def hs256_with_public_key(key: SigningKey) -> str:
    """The classic confusion attack: HS256 'signed' with the published public key as secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    unsigned = hand_made(header, claims(), b"").rstrip(".")
    signature = hmac.new(key.public_pem(), unsigned.encode(), hashlib.sha256).digest()
    return hand_made(header, claims(), signature)


@dataclass
class JwksServer:
    """A JWKS endpoint on loopback: `keys` is what it serves, `fetches` how often it was asked."""

    keys: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0
    down: bool = False
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"

    def serve(self, *keys: SigningKey) -> None:
        self.keys = [k.jwk() for k in keys]


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    state = JwksServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.fetches += 1
            if state.down:
                self.send_error(503, "identity provider down")
                return
            body = json.dumps({"keys": state.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    state.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=state.server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    yield state
    state.server.shutdown()
    state.server.server_close()
    thread.join(timeout=5)


def verifier(jwks: JwksServer, *, min_refresh_s: float = 60.0) -> JwksVerifier:
    return JwksVerifier(JwksKeys(jwks.url, min_refresh_s=min_refresh_s), issuer=ISSUER,
                        audience=AUDIENCE)


async def refused(check: JwksVerifier | JwtVerifier, token: str) -> str:
    with pytest.raises(Unauthorized) as caught:
        await check.authenticate(token)
    return str(caught.value)


# --------------------------------------------------------------------------- accepted


async def test_a_good_rs256_token_from_the_published_key_is_accepted(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    principal = await verifier(jwks).authenticate(key.token(roles=["planner", "ops"]))
    assert principal == Principal(sub="u-42", roles=frozenset({"planner", "ops"}))


async def test_a_good_es256_token_from_the_published_key_is_accepted(jwks: JwksServer) -> None:
    key = SigningKey.ec("ec-1")
    jwks.serve(SigningKey.rsa("rsa-1"), key)
    assert (await verifier(jwks).authenticate(key.token())).sub == "u-42"


async def test_keys_are_fetched_once_and_then_served_from_the_cache(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    check = verifier(jwks)
    for _ in range(5):
        await check.authenticate(key.token())
    assert jwks.fetches == 1


# --------------------------------------------------------------------------- rotation


async def test_an_unknown_kid_makes_one_refresh_and_the_rotated_key_then_works(
    jwks: JwksServer,
) -> None:
    old, new = SigningKey.rsa("2026-11"), SigningKey.ec("2026-12")
    jwks.serve(old)
    check = verifier(jwks, min_refresh_s=0.2)
    await check.authenticate(old.token())
    jwks.serve(new)  # the provider rotates its keys
    await asyncio.sleep(0.25)
    assert (await check.authenticate(new.token())).sub == "u-42"
    assert jwks.fetches == 2
    await check.authenticate(new.token())
    assert jwks.fetches == 2


async def test_made_up_kids_cannot_make_every_request_fetch_the_keys(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    check = verifier(jwks, min_refresh_s=60)
    await check.authenticate(key.token())
    for n in range(20):
        reason = await refused(check, key.token(kid=f"invented-{n}"))
        assert "unknown key" in reason
    assert jwks.fetches == 1


async def test_concurrent_requests_naming_a_new_kid_share_one_fetch(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    check = verifier(jwks)
    await asyncio.gather(*(check.authenticate(key.token()) for _ in range(10)))
    assert jwks.fetches == 1


# --------------------------------------------------------------------------- refused


async def test_hs256_signed_with_the_public_key_as_secret_is_refused(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    reason = await refused(verifier(jwks), hs256_with_public_key(key))
    assert "'HS256' is not accepted" in reason
    assert jwks.fetches == 0  # refused on its header, before any key is looked up


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_an_unsigned_token_is_refused(jwks: JwksServer, alg: str) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    token = hand_made({"alg": alg, "typ": "JWT", "kid": key.kid}, claims(), b"")
    assert "is not accepted" in await refused(verifier(jwks), token)


async def test_a_token_signed_by_a_key_the_provider_does_not_publish_is_refused(
    jwks: JwksServer,
) -> None:
    published, impostor = SigningKey.rsa("rsa-1"), SigningKey.rsa("rsa-1")
    jwks.serve(published)
    assert "Signature verification failed" in await refused(verifier(jwks), impostor.token())


async def test_a_key_is_not_used_with_an_algorithm_other_than_its_own(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    token = jwt.encode(claims(), key.private, algorithm="PS256", headers={"kid": key.kid})
    check = JwksVerifier(JwksKeys(jwks.url), algorithms=["RS256", "PS256"], issuer=ISSUER,
                         audience=AUDIENCE)
    assert "is for RS256" in await refused(check, token)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"exp": int(time.time()) - 60}, "token expired"),
    ({"exp": None}, 'missing the "exp" claim'),
    ({"iss": "https://elsewhere.example"}, "Invalid issuer"),
    ({"aud": "another-app"}, "Audience doesn't match"),
    ({"aud": None}, 'missing the "aud" claim'),
    ({"roles": "planner"}, "'roles' must be a list"),
], ids=["expired", "no-exp", "wrong-issuer", "wrong-audience", "no-audience", "roles-not-a-list"])
async def test_a_well_signed_token_with_bad_claims_is_refused(
    jwks: JwksServer, overrides: dict[str, Any], reason: str,
) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    assert reason in await refused(verifier(jwks), key.token(**overrides))


async def test_a_token_naming_no_key_is_refused(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    token = jwt.encode(claims(), key.private, algorithm="RS256")
    assert "names no signing key" in await refused(verifier(jwks), token)


async def test_development_mode_refuses_an_rs256_token() -> None:
    key = SigningKey.rsa("rsa-1")
    reason = await refused(JwtVerifier("d" * 64, issuer=ISSUER, audience=AUDIENCE), key.token())
    assert "'RS256' is not accepted here (only HS256)" in reason


# --------------------------------------------------------------------------- over HTTP


def door_app(check: JwksVerifier) -> FastAPI:
    app = FastAPI()
    install_problem_responses(app)

    router = APIRouter()

    @router.get("/things")
    async def things() -> dict[str, str]:
        return {"ok": "yes"}

    app.include_router(router)

    permissions = Permissions("test", {("GET", "/things"): frozenset({"planner"})})
    permissions.check_covers(router.routes, documented_routes(app.openapi()))
    app.add_middleware(Door, routes=router.routes, permissions=permissions, verifier=check)
    return app


async def get_things(app: FastAPI, token: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as http:
        return await http.get("/things", headers={"Authorization": f"Bearer {token}"})


async def test_the_jwks_endpoint_down_answers_401_with_a_reason_not_500(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.down = True
    response = await get_things(door_app(verifier(jwks)), key.token())
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert "signing keys unavailable" in response.json()["detail"]


async def test_the_jwks_endpoint_unreachable_answers_401_with_a_reason() -> None:
    key = SigningKey.rsa("rsa-1")
    with socket.socket() as closed:  # a port nobody listens on once this closes
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    check = JwksVerifier(JwksKeys(f"http://127.0.0.1:{port}/jwks.json", timeout_s=1),
                         issuer=ISSUER, audience=AUDIENCE)
    response = await get_things(door_app(check), key.token())
    assert response.status_code == 401
    assert "signing keys unavailable: ConnectError" in response.json()["detail"]


async def test_keys_in_hand_keep_working_while_the_endpoint_is_down(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    check = JwksVerifier(JwksKeys(jwks.url, min_refresh_s=0, max_age_s=0.05),
                         issuer=ISSUER, audience=AUDIENCE)
    app = door_app(check)
    assert (await get_things(app, key.token())).status_code == 200
    jwks.down = True
    await asyncio.sleep(0.1)
    assert (await get_things(app, key.token())).status_code == 200
    assert jwks.fetches == 2  # it did try


async def test_a_good_token_passes_the_door_and_a_refused_one_says_why(jwks: JwksServer) -> None:
    key = SigningKey.rsa("rsa-1")
    jwks.serve(key)
    app = door_app(verifier(jwks))
    assert (await get_things(app, key.token())).json() == {"ok": "yes"}
    forbidden = await get_things(app, key.token(roles=["sales"]))
    assert forbidden.status_code == 403
    assert "needs one of the roles ['planner']" in forbidden.json()["detail"]
    unsigned = await get_things(app, hand_made({"alg": "none"}, claims(), b""))
    assert unsigned.status_code == 401
