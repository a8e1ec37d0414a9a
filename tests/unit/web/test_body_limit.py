"""The body-size limit on a real FastAPI app: refused with 413 problem+json before it is read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from shared.web.body_limit import BodyLimit
from shared.web.problems import PROBLEM_JSON, install_problem_responses

LIMIT = 1024
CHUNK = b"x" * 256


@pytest.fixture
def seen() -> list[int]:
    """The body sizes the route got to see."""
    return []


@pytest.fixture
def app(seen: list[int]) -> FastAPI:
    app = FastAPI()
    install_problem_responses(app)
    app.add_middleware(BodyLimit, default=LIMIT, routes={"/upload": 4 * LIMIT})

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        seen.append(len(body))
        return {"size": len(body)}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, Any]:
        return await echo(request)

    return app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def test_a_body_within_the_limit_reaches_the_route(
    client: httpx.AsyncClient, seen: list[int]
) -> None:
    response = await client.post("/echo", content=b"x" * LIMIT)

    assert response.status_code == 200 and seen == [LIMIT]


async def test_a_declared_length_over_the_limit_is_refused_without_calling_the_route(
    client: httpx.AsyncClient, seen: list[int]
) -> None:
    response = await client.post("/echo", content=b"x" * (25 * 1024 * 1024))

    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM_JSON
    assert response.json()["detail"] == f"the request body is larger than {LIMIT} bytes"
    assert seen == []


async def test_a_chunked_body_is_refused_as_soon_as_it_crosses_the_limit(
    app: FastAPI, seen: list[int]
) -> None:
    pulled = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": CHUNK, "more_body": pulled < 100_000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    # No Content-Length: the server hands the body over chunk by chunk as it arrives.
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/echo", "raw_path": b"/echo", "root_path": "",
             "query_string": b"", "headers": [(b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 1), "server": ("t", 80)}
    await app(scope, receive, send)

    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    assert (b"content-type", PROBLEM_JSON.encode()) in start["headers"]
    assert pulled == LIMIT // len(CHUNK) + 1
    assert seen == []


async def test_a_route_with_its_own_limit_takes_more_and_still_refuses_past_it(
    client: httpx.AsyncClient, seen: list[int]
) -> None:
    assert (await client.post("/upload", content=b"x" * (3 * LIMIT))).status_code == 200
    assert (await client.post("/upload", content=b"x" * (5 * LIMIT))).status_code == 413
    assert seen == [3 * LIMIT]
