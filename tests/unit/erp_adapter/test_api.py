"""The erp_adapter's upload route on a fake unit of work: refusals answer as problem+json."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from services.erp_adapter import api
from services.erp_adapter.config import load_ownership
from shared.tokens import JwtVerifier
from shared.web.problems import PROBLEM_JSON, install_problem_responses
from tests.unit.erp_adapter.fakes import FakeErp, fake_unit_of_work

VERIFIER = JwtVerifier(secrets.token_hex(32))


def token(*roles: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {VERIFIER.issue('u-9', list(roles))}"}


@pytest.fixture
def fake() -> FakeErp:
    return fake_unit_of_work()


@pytest.fixture
async def client(fake: FakeErp) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_problem_responses(app)
    app.include_router(api.router)
    app.state.jwt = VERIFIER
    app.state.uow = fake.uow
    app.state.ownership = load_ownership()
    app.state.runtime = SimpleNamespace(
        settings=SimpleNamespace(import_max_bytes=64, import_batch_size=500))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://erp") as c:
        yield c


@pytest.mark.parametrize(("filename", "content", "status", "error", "reason"), [
    ("empty.csv", b"", 422, "UnreadableFile", "empty.csv is empty"),
    ("book.xlsx", b"PK\x03\x04\x14\x00", 415, "UnsupportedFormat", "looks like an Excel workbook"),
])
async def test_a_file_that_cannot_be_imported_is_a_problem_with_its_status_reason_and_kind(
    client: httpx.AsyncClient, filename: str, content: bytes, status: int, error: str, reason: str,
) -> None:
    response = await client.post("/imports", headers=token("integration"),
                                 files={"file": (filename, content)})

    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == status and problem["error"] == error
    assert reason in problem["detail"] and [problem["detail"]] == problem["problems"]


async def test_a_file_over_the_upload_limit_is_refused_and_nothing_is_written(
    client: httpx.AsyncClient, fake: FakeErp,
) -> None:
    response = await client.post("/imports", headers=token("integration"),
                                 files={"file": ("big.csv", b"customer_id,name\n" + b"C,x\n" * 20)})

    assert response.status_code == 413 and response.headers["content-type"] == PROBLEM_JSON
    assert fake.uow.commits == 0


async def test_a_good_upload_is_answered_with_its_import_report(client: httpx.AsyncClient) -> None:
    response = await client.post("/imports", headers=token("integration"),
                                 files={"file": ("c.csv", b"customer_id,name\nC-1,Acme\n")})

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["summary"] == "c.csv: 1 row — 1 new, 0 updated, 0 unchanged, 0 rejected"
    assert (report["kind"], report["format"], report["dry_run"], report["errors"]) == (
        "customers", "csv", False, [])


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (token("ops"), 403)])
async def test_only_the_integration_role_may_upload_and_a_refused_upload_writes_nothing(
    client: httpx.AsyncClient, fake: FakeErp, headers: dict[str, str], status: int,
) -> None:
    response = await client.post("/imports", headers=headers,
                                 files={"file": ("c.csv", b"customer_id,name\nC-1,Acme\n")})
    assert response.status_code == status
    assert fake.uow.commits == 0 and not fake.master_has_rows()
