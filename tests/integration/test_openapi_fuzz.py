"""Each service's OpenAPI document tells the truth: schemathesis fuzzes the app against it.

Every service is built by its own `build()` on fresh, migrated databases and a namespace of its
own, and runs in-process (ASGI) with its lifespan, so requests reach the real PostgreSQL. Each
operation gets valid and invalid requests, under a token of every role or none, from a fixed
seed; every answer must be no 5xx, a status the document declares and a body its schema allows.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.dispatch import main as dispatch_main
from services.erp_adapter import main as erp_main
from services.notification import main as notification_main
from services.order import main as order_main
from shared.tokens import ROLES, JwtVerifier
from tests.conftest import RabbitJanitor, Servers, service_database

pytestmark = pytest.mark.integration

BUILDERS: dict[str, Callable[..., Any]] = {
    "order": order_main.build,
    "dispatch": dispatch_main.build,
    "notification": notification_main.build,
    "erp_adapter": erp_main.build,
}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Per operation and generation mode: the four services together fuzz in about a minute on two
# busy cores (SPINE_FUZZ_REPORT=1 prints each one's time and answers).
MAX_EXAMPLES = 200
FUZZ_SETTINGS = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # a fixed seed: a failure found once is found again, and in CI
    database=None,
    deadline=None,
    # Shrinking is what makes a failing run slow; the first failing example is reported as is.
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=list(hypothesis.HealthCheck),
)


def _callers(secret: str) -> list[dict[str, str]]:
    """No token, then one token per role (each its own user)."""
    verifier = JwtVerifier(secret)
    return [{}] + [{"Authorization": f"Bearer {verifier.issue(f'fuzz-{role}', [role])}"}
                   for role in sorted(ROLES)]


def _fuzz(schema: Any, callers: list[dict[str, str]], seen: Counter[int]) -> list[str]:
    """Every operation of `schema`, positive and negative; one line per operation that failed."""
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            try:
                _operation_test(operation, mode, callers, seen)()
            except hypothesis.errors.Unsatisfiable:
                pass  # nothing to get wrong: no parameter or body to send an invalid one in
            except Exception as exc:
                failures.append(f"{operation.label} ({mode}): {exc}")
    return failures


def _operation_test(operation: Any, mode: schemathesis.GenerationMode,
                    callers: list[dict[str, str]], seen: Counter[int]) -> Callable[[], None]:
    # In turn rather than drawn: hypothesis would favour the first, simplest caller.
    turns = itertools.cycle(callers)

    @FUZZ_SETTINGS
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=next(turns), checks=CHECKS)
        seen[response.status_code] += 1

    return run


@pytest.mark.parametrize("service", sorted(BUILDERS))
async def test_every_answer_of_the_service_is_declared_in_its_openapi_document(
    service: str, servers: Servers, namespace: str, rabbit_janitor: RabbitJanitor,
    jwt_secret: str,
) -> None:
    async with service_database(servers.pg_url, service, namespace) as password:
        await _fuzz_service(service, servers, namespace, password, rabbit_janitor, jwt_secret)


async def _fuzz_service(service: str, servers: Servers, namespace: str, db_password: str,
                        rabbit_janitor: RabbitJanitor, jwt_secret: str) -> None:
    build = BUILDERS[service]
    settings = importlib.import_module(f"services.{service}.config").Settings(
        pg_url=servers.pg_url, amqp_url=servers.amqp_url, db_prefix=namespace, namespace=namespace,
        db_password=db_password)
    runtime, app = build(settings)
    rabbit_janitor.subscribers_of(runtime.broker, runtime.topology)

    def fuzz() -> list[str]:
        # schemathesis runs the app and its lifespan on an event loop thread of its own.
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        try:
            return _fuzz(schema, _callers(jwt_secret), seen)
        finally:
            asgi.shutdown_lifespans()

    seen: Counter[int] = Counter()
    started = time.monotonic()
    failures = await asyncio.to_thread(fuzz)
    elapsed = time.monotonic() - started
    if os.environ.get("SPINE_FUZZ_REPORT"):
        print(f"\n{service}: fuzzed in {elapsed:.1f} s, answers by status {dict(sorted(seen.items()))}")
    assert not failures, "\n\n".join(failures)
    # Proof the fuzzing got past the door: some requests were served, some refused as invalid.
    assert seen[200] and seen[422], seen
