"""Settings of the notification service."""

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from services.notification.rules import DEFAULT_RULES
from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service: ClassVar[str] = "notification"

    rules_file: Path = Field(
        default=DEFAULT_RULES,
        description="the notification rules (SPINE_RULES_FILE); validated at start, and a bad "
                    "rule stops the service naming the rule and the field")
