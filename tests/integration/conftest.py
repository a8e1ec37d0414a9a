"""Integration tests run against the real PostgreSQL and RabbitMQ, never without them."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared.telemetry import setup_tracing


@pytest.fixture(autouse=True)
def _servers_required(servers: object) -> None:
    """Every integration test fails (not skips) when the servers are missing."""


@pytest.fixture(scope="session", autouse=True)
def tracer_provider() -> TracerProvider:
    """The tracer provider every service process installs, so spans (and traceparents) exist."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    return setup_tracing("spinetest")
