"""Settings of the dispatch service."""

from typing import ClassVar

from pydantic import Field

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service: ClassVar[str] = "dispatch"

    escalation_interval_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="how often the escalation timer looks for overdue exceptions "
                    "(SPINE_ESCALATION_INTERVAL_S)")
