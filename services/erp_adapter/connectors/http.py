"""The HTTP connector: a JSON POST per confirmation to the ERP's endpoint.

`Idempotency-Key` is the causing event's id, the same at every attempt, so the ERP books a
retried confirmation once. A 2xx answer is the acknowledgement (kept as the response); a 4xx
other than 408/429 is a refusal (failed, no retry); a 5xx, 408, 429 or a timeout is tried
again later with back-off. Authentication: a bearer token, or basic user and password.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from services.erp_adapter.connectors import Ack, Rejected

if TYPE_CHECKING:
    from services.erp_adapter.config import Settings
    from services.erp_adapter.confirmations import Confirmation

NAME = "http"
_RETRIED_4XX = frozenset({408, 425, 429})


class TemporaryFailure(Exception):
    """The ERP did not take it this time (5xx, 408, 429): tried again later."""


def _answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:2000]
    return {"status": response.status_code, "body": body}


class HttpConnector:
    name = NAME

    def __init__(self, url: str, *, token: str | None = None,
                 basic: tuple[str, str] | None = None, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.timeout_s, self.transport = url, timeout_s, transport
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.auth = httpx.BasicAuth(*basic) if basic else None

    def describe(self, confirmation: Confirmation) -> dict[str, Any]:
        return {"method": "POST", "url": self.url,
                "idempotency_key": str(confirmation.event_id)}

    async def send(self, confirmation: Confirmation, *, stem: str) -> Ack:
        async with httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport,
                                     auth=self.auth) as client:
            response = await client.post(self.url, json=confirmation.document, headers={
                **self.headers, "Idempotency-Key": str(confirmation.event_id)})
        answer = _answer(response)
        if response.is_success:
            return Ack(acknowledged=True, response=answer)
        if 400 <= response.status_code < 500 and response.status_code not in _RETRIED_4XX:
            raise Rejected(f"the ERP refused it: HTTP {response.status_code} {answer['body']}"
                           [:1000])
        raise TemporaryFailure(f"HTTP {response.status_code} {answer['body']}"[:1000])


def build(settings: Settings) -> HttpConnector:
    if not settings.erp_url:
        raise ValueError("SPINE_ERP_CONNECTOR=http needs SPINE_ERP_URL")
    token = settings.erp_token.get_secret_value() if settings.erp_token else None
    basic = None
    if settings.erp_username and settings.erp_password:
        basic = (settings.erp_username, settings.erp_password.get_secret_value())
    return HttpConnector(settings.erp_url, token=token, basic=basic,
                         timeout_s=settings.erp_timeout_s)
