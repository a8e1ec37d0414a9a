"""Settings of the order service."""

from typing import ClassVar

from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service: ClassVar[str] = "order"
