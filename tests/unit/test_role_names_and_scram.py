"""Role names, the services' database URL, and the SCRAM verifier `spine db setup` sends."""

from __future__ import annotations

import base64
import hashlib
import hmac

from sqlalchemy.engine import make_url

from services.erp_adapter.config import Settings as ErpSettings
from shared import registry
from shared.db.roles import DatabaseRoles, new_password, scram_verifier

SECRET = "s" * 40


def test_roles_are_named_after_the_database_so_each_prefix_has_its_own() -> None:
    assert DatabaseRoles.of(registry.ERP_ADAPTER, "spine") == DatabaseRoles(
        "spine_erp", owner="spine_erp_owner", runtime="spine_erp_runtime")
    longest = DatabaseRoles.of(registry.NOTIFICATION, "spinetest_0123abcd_notification")
    assert len(longest.runtime) <= 63  # PostgreSQL would cut a longer name silently


def test_a_service_logs_in_as_its_runtime_role_whatever_login_spine_pg_url_names() -> None:
    settings = ErpSettings(_env_file=None, jwt_secret=SECRET, db_prefix="p1",
                           pg_url="postgresql://postgres:admin-pw@db.example:6543/?sslmode=require",
                           db_password="run time/pw")
    url = make_url(settings.database_url)
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+asyncpg", "p1_erp_runtime", "run time/pw", "db.example", 6543, "p1_erp")
    assert url.query == {"sslmode": "require"}
    assert "admin-pw" not in settings.database_url
    assert "run time/pw" not in repr(settings)


def test_without_a_password_none_is_sent() -> None:
    settings = ErpSettings(_env_file=None, jwt_secret=SECRET)
    assert make_url(settings.database_url).password is None


def test_generated_passwords_differ_and_need_no_quoting() -> None:
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50
    assert all(len(p) >= 32 and p.replace("-", "").replace("_", "").isalnum() for p in passwords)


def test_the_verifier_authenticates_the_rfc_7677_exchange_as_the_server_would() -> None:
    """RFC 7677 §3: user `user`, password `pencil`; the server checks the client's proof and
    signs its answer with nothing but the stored verifier."""
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_verifier("pencil", salt=salt, iterations=4096)
    method, rest = verifier.split("$", 1)
    head, keys = rest.split("$")
    iterations, salt_b64 = head.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    assert (method, iterations, salt_b64) == ("SCRAM-SHA-256", "4096", "W22ZaJ0SNY7soEsUEjb6gQ==")

    auth_message = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message, "sha256").digest()
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    server_signature = hmac.new(server_key, auth_message, "sha256").digest()
    assert base64.b64encode(server_signature) == b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_each_verifier_has_its_own_salt() -> None:
    assert scram_verifier("same") != scram_verifier("same")
