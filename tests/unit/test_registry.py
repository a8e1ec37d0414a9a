"""The registry is the one list of services: everything that names them agrees with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.dispatch.config import Settings as DispatchSettings
from services.erp_adapter.config import NAME as ERP_NAME
from services.erp_adapter.config import Settings as ErpSettings
from services.notification.config import Settings as NotificationSettings
from services.order.config import Settings as OrderSettings
from shared import registry
from shared.config import ServiceSettings
from shared.messaging.topology import CONSUMER_QUEUES, Topology, consumer_queue, known_queues

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SECRET = "s" * 40


def test_every_service_folder_is_registered_and_every_registered_service_has_a_folder() -> None:
    folders = {p.parent.name for p in SERVICES_DIR.glob("*/main.py")}
    assert folders == set(registry.NAMES)
    for service in registry.SERVICES:
        assert (SERVICES_DIR / service.name / "migrations" / "env.py").is_file()
        assert service.module == f"services.{service.name}.main"


def test_ports_and_databases_are_those_design_fixes() -> None:
    assert {s.name: s.http_port for s in registry.SERVICES} == {
        "order": 8001, "dispatch": 8002, "notification": 8003, "erp_adapter": 8004}
    assert [s.database("spine") for s in registry.SERVICES] == [
        "spine_order", "spine_dispatch", "spine_notification", "spine_erp"]


@pytest.mark.parametrize("settings_class", [OrderSettings, DispatchSettings, NotificationSettings,
                                            ErpSettings])
def test_each_services_settings_take_its_name_port_and_database_from_the_registry(
    settings_class: type[ServiceSettings],
) -> None:
    settings = settings_class(jwt_secret=SECRET, db_prefix="p")  # type: ignore[arg-type]
    entry = registry.get(settings.service)
    assert settings.port == entry.http_port
    assert settings.database_name == entry.database("p")


def test_the_erp_adapter_is_called_erp_adapter_everywhere_but_its_database_is_erp() -> None:
    settings = ErpSettings(jwt_secret=SECRET)  # type: ignore[arg-type]
    assert settings.service == ERP_NAME == registry.ERP_ADAPTER.name == "erp_adapter"
    assert settings.database_name == "spine_erp"


def test_a_settings_class_for_an_unregistered_service_fails_when_it_is_defined() -> None:
    with pytest.raises(KeyError, match="no service 'erp'"):
        class Erp(ServiceSettings):  # noqa: F841 - defining it is the test
            service = "erp"


def test_the_topology_declares_the_queues_and_bindings_the_registry_lists() -> None:
    # Pinned: queue names are what dead-letter tooling, broker permissions and tests rely on.
    expected = {
        "ns.order.order-submitted": "ext.*.order.submitted",
        "ns.order.customer-upserted": "erp.customer.upserted",
        "ns.order.product-upserted": "erp.product.upserted",
        "ns.dispatch.order-confirmed": "order.confirmed",
        "ns.dispatch.order-cancelled": "order.cancelled",
        "ns.dispatch.production-exception": "ext.*.production.exception",
        "ns.dispatch.dispatch-progress": "ext.*.dispatch.progress",
        "ns.notification.events": "dispatch.approval.approved",
        "ns.erp_adapter.dispatch-shipped": "dispatch.shipped",
        "ns.erp_adapter.dispatch-corrected": "dispatch.corrected",
    }
    assert known_queues("ns") == list(expected)
    topology = Topology("ns")
    for service, queues in CONSUMER_QUEUES.items():
        assert queues == list(registry.get(service).consumer_queues)
        for purpose in dict(queues):
            queue = consumer_queue(topology, service, purpose)
            assert queue.routing() == expected[queue.name]


def test_a_service_name_not_in_the_registry_is_a_key_error_naming_the_known_ones() -> None:
    with pytest.raises(KeyError, match="order, dispatch, notification, erp_adapter"):
        registry.get("erp")
