"""The services of Spine, written down once: name, HTTP port, database, queues, entry point.

Settings, the topology, the operator CLI, `make run`, the end-to-end tests and the bench all
read this table, so adding or renaming a service is one edit here (plus its folder).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType


@dataclass(frozen=True)
class Service:
    """One service: its folder under `services/`, its port and database, the queues it consumes."""

    name: str
    http_port: int
    # The database is `<prefix>_<database_suffix>`; only the erp_adapter's differs from its name
    # (`spine_erp`, fixed by DESIGN.md and by the database roles in deploy/).
    database_suffix: str
    # The first word of every routing key it publishes (`erp.` for the erp_adapter): the broker
    # lets only this service's user publish it, and consumers refuse it from anyone else.
    event_prefix: str
    # (purpose, binding key) of each quorum queue `spine.<name>.<purpose>` it consumes from; a
    # purpose named twice is one queue with two bindings.
    consumer_queues: tuple[tuple[str, str], ...] = ()

    @property
    def module(self) -> str:
        """The entry point: `python -m <module>` runs the service."""
        return f"services.{self.name}.main"

    def database(self, prefix: str) -> str:
        """Name of this service's database under a prefix (SPINE_DB_PREFIX or a test's own)."""
        return f"{prefix}_{self.database_suffix}"


ORDER = Service(
    "order",
    http_port=8001,
    database_suffix="order",
    event_prefix="order",
    consumer_queues=(
        ("order-submitted", "ext.*.order.submitted"),
        ("customer-upserted", "erp.customer.upserted"),
        ("product-upserted", "erp.product.upserted"),
    ),
)
DISPATCH = Service(
    "dispatch",
    http_port=8002,
    database_suffix="dispatch",
    event_prefix="dispatch",
    consumer_queues=(
        ("order-confirmed", "order.confirmed"),
        ("order-cancelled", "order.cancelled"),
        ("production-exception", "ext.*.production.exception"),
        ("dispatch-progress", "ext.*.dispatch.progress"),
    ),
)
# The notification service's default rules: its queue binds exactly the event types they name.
NOTIFICATION_RULES = Path(__file__).resolve().parents[1] / "services/notification/rules/default.json"


def _rule_bindings(path: Path) -> tuple[tuple[str, str], ...]:
    """One binding of the notification queue per event type the rules file names (its `on`s).

    Read here with the standard library so the topology (and `spine topology declare`) binds
    what the service will consume; the service itself binds the `on`s of the rules it loaded
    (SPINE_RULES_FILE) at start, and validates them. An event no rule names is not consumed:
    observing it would cost a transaction per event and tell no one anything.
    """
    rules = json.loads(path.read_text())["rules"]
    return tuple(("events", on) for on in sorted({rule["on"] for rule in rules}))


NOTIFICATION = Service(
    "notification",
    http_port=8003,
    database_suffix="notification",
    event_prefix="notification",
    consumer_queues=_rule_bindings(NOTIFICATION_RULES),
)
ERP_ADAPTER = Service(
    "erp_adapter",
    http_port=8004,
    database_suffix="erp",
    event_prefix="erp",
    # What becomes a delivery confirmation to the ERP, and keeps its dispatch replica.
    consumer_queues=(
        ("dispatch-shipped", "dispatch.shipped"),
        ("dispatch-corrected", "dispatch.corrected"),
    ),
)

SERVICES: tuple[Service, ...] = (ORDER, DISPATCH, NOTIFICATION, ERP_ADAPTER)
BY_NAME: MappingProxyType[str, Service] = MappingProxyType({s.name: s for s in SERVICES})
NAMES: tuple[str, ...] = tuple(BY_NAME)
# Routing keys of outside plant system `S` are `ext.S.…`, and only S may publish them.
EXTERNAL_PREFIX = "ext"
BY_PREFIX: MappingProxyType[str, Service] = MappingProxyType(
    {s.event_prefix: s for s in SERVICES}
)


def get(name: str) -> Service:
    """The service called `name`; a KeyError that lists the known names otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no service {name!r}; the services are {', '.join(NAMES)}") from None
