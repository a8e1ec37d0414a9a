"""A service checks tokens exactly one way, and its settings refuse anything else at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.order.config import Settings
from shared.auth import make_verifier
from shared.tokens import JwksVerifier, JwtVerifier

SECRET = "s" * 40
JWKS = "https://idp.plant.example/.well-known/jwks.json"


def settings(**values: object) -> Settings:
    if values.get("jwks_url"):
        values.setdefault("jwt_audience", "spine")
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return str(caught.value)


def test_the_development_secret_alone_checks_hs256_tokens() -> None:
    assert isinstance(make_verifier(settings(jwt_secret=SECRET)), JwtVerifier)


def test_a_jwks_url_alone_checks_tokens_against_the_providers_keys() -> None:
    verifier = make_verifier(settings(jwt_secret=None, jwks_url=JWKS, jwt_issuer="https://idp"))
    assert isinstance(verifier, JwksVerifier)
    assert verifier.algorithms == ("RS256", "ES256")
    assert verifier.issuer == "https://idp"


def test_a_service_with_neither_the_secret_nor_a_jwks_refuses_to_start() -> None:
    reason = refusal(jwt_secret=None)
    assert "set SPINE_JWT_SECRET (development" in reason and "or SPINE_JWKS_URL" in reason


def test_a_jwks_without_an_audience_refuses_to_start() -> None:
    assert "set SPINE_JWT_AUDIENCE" in refusal(jwt_secret=None, jwks_url=JWKS, jwt_audience=None)


def test_a_service_with_both_the_secret_and_a_jwks_refuses_to_start() -> None:
    assert "not both" in refusal(jwt_secret=SECRET, jwks_url=JWKS)


@pytest.mark.parametrize("secret", ["changeme", "CHANGETHIS", "changeme".ljust(40), "x" * 31])
def test_a_placeholder_or_short_secret_is_still_refused(secret: str) -> None:
    reason = refusal(jwt_secret=secret)
    assert "jwt_secret" in reason
    assert "placeholder" in reason or "at least 32" in reason


@pytest.mark.parametrize("algorithms", ["HS256", "RS256,HS512", "none", ""])
def test_symmetric_or_no_algorithms_are_refused_for_the_jwks(algorithms: str) -> None:
    assert "must name asymmetric algorithms" in refusal(jwt_secret=None, jwks_url=JWKS,
                                                        jwt_algorithms=algorithms)


def test_the_jwks_algorithms_are_read_comma_separated() -> None:
    found = settings(jwt_secret=None, jwks_url=JWKS, jwt_algorithms="ES256, PS256")
    assert found.algorithms == ("ES256", "PS256")


@pytest.mark.parametrize("url", ["http://idp.plant.example/jwks", "file:///etc/keys.json"])
def test_keys_are_not_fetched_in_the_clear_except_on_loopback(url: str) -> None:
    assert "must be an https:// URL" in refusal(jwt_secret=None, jwks_url=url)
    assert settings(jwt_secret=None, jwks_url="http://127.0.0.1:9000/jwks").jwks_url
