"""The erp_adapter's unit of work: its transaction holds the master data, import runs and log."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.erp_adapter import publishers
from services.erp_adapter.config import NAME
from services.erp_adapter.repository import (
    ConfirmationRepository,
    ConflictRepository,
    ConnectorRepository,
    ImportRunRepository,
    IntegrationLogRepository,
    MasterDataRepository,
    ShipmentRepository,
    SpineValues,
    SqlAlchemyConfirmationRepository,
    SqlAlchemyConflictRepository,
    SqlAlchemyConnectorRepository,
    SqlAlchemyImportRunRepository,
    SqlAlchemyIntegrationLogRepository,
    SqlAlchemyMasterDataRepository,
    SqlAlchemyShipmentRepository,
    SqlAlchemySpineValues,
)
from services.erp_adapter.tables import metadata
from shared.uow import ConnTransaction, SqlAlchemyUnitOfWork, Transaction, UnitOfWork


class ErpTransaction(Transaction):
    """What an erp_adapter handler works with: master data, runs, the log, conflicts, replicas."""

    master_data: MasterDataRepository
    runs: ImportRunRepository
    integration_log: IntegrationLogRepository
    conflicts: ConflictRepository
    spine_values: SpineValues
    shipments: ShipmentRepository
    confirmations: ConfirmationRepository
    connectors: ConnectorRepository


class SqlErpTransaction(ConnTransaction, ErpTransaction):
    def __init__(self, conn: AsyncConnection, **context: Any) -> None:
        super().__init__(conn, **context)
        self.master_data = SqlAlchemyMasterDataRepository(conn)
        self.runs = SqlAlchemyImportRunRepository(conn, self.track)
        self.integration_log = SqlAlchemyIntegrationLogRepository(conn)
        self.conflicts = SqlAlchemyConflictRepository(conn, self.track)
        self.spine_values = SqlAlchemySpineValues(conn)
        self.shipments = SqlAlchemyShipmentRepository(conn)
        self.confirmations = SqlAlchemyConfirmationRepository(conn, self.track)
        self.connectors = SqlAlchemyConnectorRepository(conn)


ErpUnitOfWork = UnitOfWork[ErpTransaction]


def sql_unit_of_work(engine: AsyncEngine) -> SqlAlchemyUnitOfWork[SqlErpTransaction]:
    """Units of work on the erp_adapter database, writing `publishers.to_wire` events."""
    return SqlAlchemyUnitOfWork(engine, NAME, metadata, transaction=SqlErpTransaction,
                                to_wire=publishers.to_wire)
