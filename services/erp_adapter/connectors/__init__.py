"""Outbound connectors: how a confirmation reaches the ERP. One module per connector.

A connector module defines `NAME` and `build(settings) -> Connector`; the settings'
`erp_connector` names the one in use, and `connect` imports it by that name. Adding a third
(an ERP's own RPC, EDI) is one new module here; its mode row appears at the first start.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from services.erp_adapter.config import Settings
    from services.erp_adapter.confirmations import Confirmation


@dataclass(frozen=True)
class Ack:
    """The connector delivered it. `acknowledged`: the ERP's answer is its acknowledgement
    (HTTP); False: an acknowledgement is awaited separately (a file read back later)."""

    acknowledged: bool
    response: dict[str, Any] = field(default_factory=dict)


class Rejected(Exception):
    """The ERP refused the confirmation itself (a 4xx): sending it again will not help."""


class Connector(Protocol):
    name: str

    def describe(self, confirmation: Confirmation) -> dict[str, Any]:
        """How it is sent (endpoint, file name): the integration log's `request`; no secrets."""
        ...

    async def send(self, confirmation: Confirmation, *, stem: str) -> Ack:
        """Deliver it, or raise (`Rejected`: for good; anything else: try again later).

        `stem` names it in order (`<UTC time>-<seq>-<event id>`), the same at every attempt.
        """
        ...


def available() -> list[str]:
    """The connector modules in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def connect(settings: Settings) -> Connector:
    """The connector the settings choose (`SPINE_ERP_CONNECTOR`)."""
    name = settings.erp_connector
    if name not in available():
        raise ValueError(f"SPINE_ERP_CONNECTOR={name!r} is no connector; there are "
                         f"{', '.join(available())}")
    module = importlib.import_module(f"{__name__}.{name}")
    connector: Connector = module.build(settings)
    return connector
