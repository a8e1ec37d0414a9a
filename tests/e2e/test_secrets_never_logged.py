"""No secret reaches a log: the JWT secret, a token, a database password (the services' own logs).

Runs after the other end-to-end tests of the session's stack (files run in name order), so
the logs it reads hold a whole run — orders walked to shipped, dead letters, refusals — plus
the calls made here with good, refused and forged tokens.
"""

from __future__ import annotations

import httpx
import jwt

from tests.e2e.conftest import Stack

# A log that shortens a secret still leaks it: any run of this many of its characters counts.
WINDOW = 12


def leaked_in(logs: str, secret: str) -> bool:
    return any(secret[i:i + WINDOW] in logs for i in range(len(secret) - WINDOW + 1))


async def test_no_secret_token_or_database_password_appears_in_any_service_log(stack: Stack) -> None:
    forged = jwt.encode({"sub": "mallory", "roles": ["supervisor"], "exp": 4102444800},
                        "not-the-secret-but-long-enough-to-sign-with-1234", algorithm="HS256")
    stack.tokens.append(forged)
    for service in ("order", "dispatch", "notification", "erp_adapter"):
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=10) as client:
            for headers in (stack.headers("ops"), stack.headers("warehouse"),
                            {"Authorization": f"Bearer {forged}"},
                            {"Authorization": f"Bearer {stack.tokens[0]}x"}):
                for path in ("/orders", "/dispatches", "/inbox", "/imports", "/nowhere"):
                    await client.get(path, headers=headers)
    logs = stack.log_text()
    # The logs are there to be searched: a run that logged nothing would prove nothing.
    for service in stack.services:
        assert len(stack.log_lines(service.name)) >= 3, f"{service.name} logged (almost) nothing"

    secrets = {"SPINE_JWT_SECRET": stack.secret}
    secrets |= {f"{name} database password": password
                for name, password in stack.db_passwords.items()}
    # A token's header and claims are no secret; its signature is what a replay needs.
    secrets |= {f"signature of token #{i}": token.rsplit(".", 1)[1]
                for i, token in enumerate(stack.tokens)}
    leaked = sorted(what for what, value in secrets.items() if leaked_in(logs, value))
    assert not leaked, f"found in the service logs: {leaked}"
    assert len(stack.tokens) >= 9 and len(stack.db_passwords) == 4
