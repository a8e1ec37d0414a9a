"""Settings of the order service."""

from typing import ClassVar

from pydantic import Field, field_validator

from shared.config import ServiceSettings
from shared.ratelimit import Rate, parse_rates

_RATES_HELP = ("name=N/s or N/min[:burst], comma-separated; `default` for every name not "
               "listed, `off` or 0 for none; unset, nothing is limited. Per process (replica)")


class Settings(ServiceSettings):
    service: ClassVar[str] = "order"

    intake_rate_limits: str = Field(
        default="",
        description="how fast each outside system may submit orders by AMQP "
        f"(`ext.<system>.order.submitted`), by system: {_RATES_HELP}",
    )
    http_rate_limits: str = Field(
        default="",
        description=f"how fast each principal (token `sub`) may `POST /orders`: {_RATES_HELP}",
    )

    @field_validator("intake_rate_limits")
    @classmethod
    def _intake_rates(cls, value: str) -> str:
        parse_rates(value, setting="SPINE_INTAKE_RATE_LIMITS")  # a bad entry refuses the start
        return value

    @field_validator("http_rate_limits")
    @classmethod
    def _http_rates(cls, value: str) -> str:
        parse_rates(value, setting="SPINE_HTTP_RATE_LIMITS")
        return value

    @property
    def intake_limits(self) -> dict[str, Rate | None]:
        """Outside system → its submission rate (SPINE_INTAKE_RATE_LIMITS)."""
        return parse_rates(self.intake_rate_limits, setting="SPINE_INTAKE_RATE_LIMITS")

    @property
    def http_limits(self) -> dict[str, Rate | None]:
        """Principal → its `POST /orders` rate (SPINE_HTTP_RATE_LIMITS)."""
        return parse_rates(self.http_rate_limits, setting="SPINE_HTTP_RATE_LIMITS")
