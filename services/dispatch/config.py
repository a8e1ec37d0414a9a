"""Settings of the dispatch service."""

from typing import ClassVar

from pydantic import Field

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service: ClassVar[str] = "dispatch"
    default_http_port: ClassVar[int] = 8002

    escalation_interval_s: float = Field(default=30.0, gt=0)
