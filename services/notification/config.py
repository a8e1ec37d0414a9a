"""Settings of the notification service."""

from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from services.notification.domain import RetryPolicy
from services.notification.rules import DEFAULT_RULES
from shared.config import ServiceSettings


class Settings(ServiceSettings):
    service: ClassVar[str] = "notification"

    rules_file: Path = Field(
        default=DEFAULT_RULES,
        description="the notification rules (SPINE_RULES_FILE); validated at start, and a bad "
                    "rule stops the service naming the rule and the field")

    # Mail (SPINE_SMTP_*): a local development server by default (`python -m aiosmtpd -n`).
    smtp_host: str = Field(default="127.0.0.1", description="the SMTP server")
    smtp_port: int = Field(default=8025, ge=1, le=65535)
    smtp_starttls: bool = Field(default=False, description="upgrade the connection with STARTTLS")
    smtp_username: str | None = Field(default=None, description="log in when set")
    smtp_password: SecretStr | None = Field(default=None, description="with smtp_username")
    smtp_from: str = Field(default="Spine <spine@localhost>", description="the From header")
    smtp_timeout_s: float = Field(default=10.0, gt=0)
    message_id_domain: str = Field(default="spine.local",
                                   description="right-hand side of each mail's Message-ID")

    webhook_timeout_s: float = Field(default=5.0, gt=0, description="per webhook POST")

    # The sender worker (one loop per outbound channel).
    delivery_max_attempts: int = Field(default=8, ge=1, description="then failed, for ops")
    retry_base_s: float = Field(default=2.0, gt=0, description="first retry after about this")
    retry_cap_s: float = Field(default=600.0, gt=0, description="longest wait between attempts")
    sender_interval_s: float = Field(default=1.0, gt=0, description="idle wait between rounds")
    sender_batch: int = Field(default=50, ge=1, le=1000, description="deliveries per round")
    sender_lease_s: float = Field(
        default=60.0, gt=0,
        description="how long an attempt owns its delivery; one cut short by a crash is taken "
                    "again after it (so it must exceed the SMTP and webhook timeouts)")

    people_import_max_bytes: int = Field(default=5 * 1024 * 1024, ge=1,
                                         description="largest people CSV an upload may send")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.delivery_max_attempts, self.retry_base_s, self.retry_cap_s)
