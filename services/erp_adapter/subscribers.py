"""Message edges: contract → command → handler, nothing else."""

from __future__ import annotations

from faststream.rabbit import RabbitBroker

from services.erp_adapter.confirmations import Shipment
from services.erp_adapter.handlers import handle
from services.erp_adapter.outbound import RecordCorrection, RecordShipment
from services.erp_adapter.unit_of_work import ErpUnitOfWork
from shared.contracts.dispatch import DispatchCorrected, DispatchTransitioned
from shared.contracts.envelope import Envelope
from shared.messaging.topology import Topology, consumer_queue

SERVICE = "erp_adapter"


def register(broker: RabbitBroker, topology: Topology, uow: ErpUnitOfWork, *,
             connector: str = "file") -> None:
    """Subscribe the adapter to the dispatch events that become confirmations.

    `connector`: the connector in use (SPINE_ERP_CONNECTOR); its mode, read from the database
    with each message, decides whether a confirmation is shadowed, awaits approval or is sent.
    """
    shipped_queue = consumer_queue(topology, SERVICE, "dispatch-shipped")
    corrected_queue = consumer_queue(topology, SERVICE, "dispatch-corrected")

    @broker.subscriber(shipped_queue, topology.events, no_reply=True,
                       title="erp_adapter/dispatch.shipped")
    async def on_dispatch_shipped(event: Envelope[DispatchTransitioned]) -> None:
        """A dispatch shipped: its delivery confirmation to the ERP."""
        data = event.data
        await handle(RecordShipment(
            event_id=str(event.event_id), consumer=shipped_queue.name,
            correlation_id=event.correlation_id, occurred_at=event.occurred_at.isoformat(),
            shipment=Shipment.shipped(
                dispatch_id=data.dispatch_id, order_id=data.order_id, version=data.version,
                evidence=dict(data.evidence),
                lines=[line.model_dump() for line in data.lines],
                backorder=[line.model_dump() for line in data.backorder]),
            connector=connector), uow)

    @broker.subscriber(corrected_queue, topology.events, no_reply=True,
                       title="erp_adapter/dispatch.corrected")
    async def on_dispatch_corrected(event: Envelope[DispatchCorrected]) -> None:
        """A shipped dispatch was corrected: a corrected confirmation to the ERP."""
        data = event.data
        await handle(RecordCorrection(
            event_id=str(event.event_id), consumer=corrected_queue.name,
            correlation_id=event.correlation_id, occurred_at=event.occurred_at.isoformat(),
            dispatch_id=data.dispatch_id, version=data.version,
            changes=[change.model_dump(by_alias=True) for change in data.changes],
            connector=connector), uow)
