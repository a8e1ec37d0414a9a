"""Settings of the erp_adapter service (the import command reads them too)."""

from typing import ClassVar

from pydantic import Field

from shared.config import ServiceSettings

# The process, its broker app_id and the `producer` of its `erp.*` events.
NAME = "erp_adapter"


class Settings(ServiceSettings):
    # Its database is `<prefix>_erp` (DESIGN.md): the registry's database suffix, not its name.
    service: ClassVar[str] = NAME

    import_batch_size: int = Field(
        default=500, ge=1, le=10_000, description="records written per import transaction"
    )
    import_max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="largest export file an upload may send"
    )

