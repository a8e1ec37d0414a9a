"""Settings of the erp_adapter service (the import command reads them too)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, SecretStr

from services.erp_adapter.domain import SCHEMAS
from services.erp_adapter.ownership import OwnershipError, OwnershipRegistry, parse_registry
from shared import registry
from shared.config import ServiceSettings

# The process, its broker app_id and the `producer` of its `erp.*` events.
NAME = "erp_adapter"
DEFAULT_OWNERSHIP = Path(__file__).with_name("ownership.json")


class Settings(ServiceSettings):
    # Its database is `<prefix>_erp` (DESIGN.md): the registry's database suffix, not its name.
    service: ClassVar[str] = NAME

    import_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="records written per import transaction"
    )
    import_max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest export file an upload may send"
    )
    ownership_file: Path = Field(
        default=DEFAULT_OWNERSHIP,
        description="the field-ownership registry (SPINE_OWNERSHIP_FILE); checked at start, "
        "and a bad one stops the service naming the entry",
    )

    # Outbound confirmations (README, "Connecting your ERP").
    erp_connector: str = Field(default="file", description="the connector in use: a module of "
                               "services/erp_adapter/connectors (file, http)")
    erp_export_dir: Path = Field(default=Path("var/erp/export"),
                                 description="where the file connector writes confirmations")
    erp_ack_dir: Path | None = Field(default=None, description="where the ERP puts its "
                                     "acknowledgement files for the file connector")
    erp_export_format: Literal["json", "csv"] = "json"
    erp_url: str | None = Field(default=None, description="the ERP endpoint of the http connector")
    erp_token: SecretStr | None = Field(default=None, description="bearer token for the ERP")
    erp_username: str | None = None
    erp_password: SecretStr | None = None
    erp_timeout_s: float = Field(default=10.0, gt=0)
    erp_push_interval_s: float = Field(default=1.0, gt=0,
                                       description="how often the push worker looks for work")
    erp_claim_lease_s: float = Field(default=60.0, gt=0, description="how long a claimed "
                                     "confirmation is not due again: a send that died with its "
                                     "process is tried again after it")
    erp_retry_base_s: float = Field(default=2.0, gt=0)
    erp_retry_cap_s: float = Field(default=600.0, gt=0)
    erp_retry_limit: int = Field(default=8, ge=1, description="attempts before a confirmation "
                                 "is failed (it can be retried by hand)")


def load_ownership(path: Path = DEFAULT_OWNERSHIP) -> OwnershipRegistry:
    """Read and check the registry; `OwnershipError` says what is wrong with which entry."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise OwnershipError([f"cannot read the ownership registry {path}: {exc}"]) from exc
    found = parse_registry(text, source=path.name, services=registry.NAMES)
    # What the import writes as the ERP's must be the ERP's in the registry too.
    for schema in SCHEMAS.values():
        found.check_erp_owns(schema.entity, schema.columns)
    return found
