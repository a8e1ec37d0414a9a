"""The field-ownership registry: checked at start, served as data, rendered into the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.erp_adapter.config import DEFAULT_OWNERSHIP, load_ownership
from services.erp_adapter.ownership import ERP, OwnershipError, check_record, parse_registry
from shared import registry
from spine_cli.main import main as spine

README = Path(__file__).resolve().parents[3] / "README.md"


def registry_text(*fields: dict[str, str], version: object = 1) -> str:
    return json.dumps({"version": version, "fields": list(fields)})


def entry(entity: str, field: str, owner: str) -> dict[str, str]:
    return {"entity": entity, "field": field, "owner": owner}


def test_the_bundled_registry_gives_master_data_to_the_erp_and_statuses_to_their_services() -> None:
    found = load_ownership()
    assert found.owner_of("customer", "name") == ERP
    assert found.owner_of("product", "uom") == ERP
    assert found.owner_of("order", "status") == "order"
    assert found.owner_of("dispatch", "status") == "dispatch"
    assert found.owner_of("dispatch", "lines[2].shipped_quantity") == "dispatch"
    assert found.owner_of("dispatch", "colour") is None


def test_a_field_named_twice_stops_the_start_naming_both_entries() -> None:
    with pytest.raises(OwnershipError) as refused:
        parse_registry(registry_text(entry("order", "status", "order"),
                                     entry("order", "status", "erp")),
                       source="own.json", services=registry.NAMES)
    assert refused.value.problems == [
        "own.json entry 2 (order.status): order.status is already named by entry 1"]


def test_an_owner_that_is_no_service_stops_the_start_naming_it() -> None:
    with pytest.raises(OwnershipError, match=r"entry 1 \(order.status\): owner 'billing' is "
                                             r"neither erp nor a Spine service"):
        parse_registry(registry_text(entry("order", "status", "billing")), source="own.json",
                       services=registry.NAMES)


def test_a_key_repeated_inside_one_entry_is_not_silently_overwritten() -> None:
    text = '{"version": 1, "fields": [{"entity": "order", "field": "status", "owner": "order",' \
           ' "owner": "erp"}]}'
    with pytest.raises(OwnershipError, match="owner appear twice"):
        parse_registry(text, source="own.json", services=registry.NAMES)


def test_a_registry_taking_an_imported_field_from_the_erp_is_refused(tmp_path: Path) -> None:
    bundled = json.loads(DEFAULT_OWNERSHIP.read_text())
    for row in bundled["fields"]:
        if (row["entity"], row["field"]) == ("product", "uom"):
            row["owner"] = "order"
    path = tmp_path / "ownership.json"
    path.write_text(json.dumps(bundled))
    with pytest.raises(OwnershipError, match="applies product.uom .owner: order. as the ERP's"):
        load_ownership(path)


def test_an_inbound_record_splits_into_the_erps_fields_conflicts_and_unknown_fields() -> None:
    checked = check_record(load_ownership(), "dispatch",
                           {"status": "delivered", "lines[1].shipped_quantity": "4", "colour": "red"})
    assert checked.erp_owned == {}
    assert [(f.field, f.value, f.owner) for f in checked.spine_owned] == [
        ("status", "delivered", "dispatch"), ("lines[1].shipped_quantity", "4", "dispatch")]
    assert checked.unknown == ["colour"]


def test_the_readme_table_is_the_one_generated_from_the_registry(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert spine(["erp", "ownership", "--markdown"]) == 0
    generated = capsys.readouterr().out
    readme = README.read_text()
    embedded = readme.split("<!-- ownership:begin -->\n", 1)[1].split("<!-- ownership:end -->", 1)[0]
    assert embedded == generated, ("README's ownership table differs from ownership.json: paste "
                                   "the output of `./spine erp ownership --markdown` between the "
                                   "ownership markers")


def test_the_command_refuses_a_bad_registry_with_every_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(registry_text(entry("order", "status", "billing"), version=0))
    assert spine(["erp", "ownership", "--file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "'version' must be a whole number from 1" in err and "'billing'" in err
