"""The services of Spine, written down once: name, HTTP port, database, queues, entry point.

Settings, the topology, the operator CLI, `make run`, the end-to-end tests and the bench all
read this table, so adding or renaming a service is one edit here (plus its folder).
"""

from __future__ import annotations

from dataclasses import dataclass
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
    # (purpose, binding key) of each quorum queue `spine.<name>.<purpose>` it consumes from.
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
NOTIFICATION = Service(
    "notification",
    http_port=8003,
    database_suffix="notification",
    event_prefix="notification",
    # Dispatch events only: its rules' event names come from the dispatch workflow table. An
    # order event no one else binds (order.received when no outside system listens) is kept
    # by the events exchange's alternate exchange, so no queue has to exist just to take it.
    consumer_queues=(("events", "dispatch.#"),),
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
