"""Settings every service shares; each service subclasses `ServiceSettings` in its own config.py."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "changethis", "dev", "test"}


class ServiceSettings(BaseSettings):
    """Read from `SPINE_*` environment variables (and `.env`) when the service starts."""

    model_config = SettingsConfigDict(env_prefix="SPINE_", env_file=".env", extra="ignore")

    service: ClassVar[str] = ""
    default_http_port: ClassVar[int] = 8000

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    pg_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432",
        description="PostgreSQL server URL without a database; each service appends its own",
    )
    db_prefix: str = Field(default="spine", pattern=r"^[a-z][a-z0-9_]*$")
    namespace: str = Field(
        default="spine",
        pattern=r"^[a-z][a-z0-9_.-]*$",
        description="prefix of exchanges and queues; tests use their own to stay isolated",
    )
    jwt_secret: SecretStr = Field(min_length=32)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    prefetch: int = Field(default=64, ge=1)
    db_pool_size: int = Field(default=16, ge=1, description="connections per service process")
    delivery_limit: int = Field(default=5, ge=1)
    log_level: str = "INFO"

    @field_validator("jwt_secret")
    @classmethod
    def _not_a_placeholder(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("SPINE_JWT_SECRET is a placeholder; generate one (make env)")
        return value

    @property
    def database_name(self) -> str:
        return f"{self.db_prefix}_{self.service}"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of this service's own database."""
        base = self.pg_url.rstrip("/").replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{base}/{self.database_name}"

    @property
    def port(self) -> int:
        return self.http_port or self.default_http_port
