"""Settings every service shares; each service subclasses `ServiceSettings` in its own config.py."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import crashpoints, registry
from shared.messaging.permissions import ANY, broker_user
from shared.messaging.topology import DEFAULT_DELIVERY_LIMIT
from shared.tokens import JWKS_ALGORITHMS

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "changethis", "dev", "test"}


class ServiceSettings(BaseSettings):
    """Read from `SPINE_*` environment variables (and `.env`) when the service starts."""

    model_config = SettingsConfigDict(env_prefix="SPINE_", env_file=".env", extra="ignore")

    # The service's name in `shared.registry`, which gives its database and default port.
    service: ClassVar[str] = ""

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
    # Exactly one of the two: the secret in development, the identity provider's keys in production.
    jwt_secret: SecretStr | None = Field(default=None, min_length=32,
                                         description="development: HS256 tokens signed with it")
    jwks_url: str | None = Field(default=None,
                                 description="production: RS256/ES256 tokens checked against it")
    jwt_algorithms: str = Field(default="RS256,ES256",
                                description="with a JWKS: the accepted algorithms, comma-separated")
    jwks_min_refresh_s: float = Field(default=30.0, ge=0,
                                      description="fewest seconds between two JWKS fetches")
    jwks_max_age_s: float = Field(default=300.0, gt=0, description="refetch keys this old")
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    prefetch: int = Field(default=64, ge=1)
    db_pool_size: int = Field(default=16, ge=1, description="connections per service process")
    delivery_limit: int = Field(
        default=DEFAULT_DELIVERY_LIMIT, ge=1,
        description="the queues' x-delivery-limit: deliveries a message may get that no process "
        "settled (it died, or lost its connection) before the broker dead-letters it",
    )
    retry_limit: int = Field(
        default=5, ge=1,
        description="attempts a message gets when its handler fails for a reason that is not "
        "a known outage (those are held and retried without limit) nor permanent",
    )
    max_message_bytes: int = Field(
        default=1024 * 1024, ge=1,
        description="largest message body a consumer reads; a larger one is dead-lettered",
    )
    declare_topology: bool = Field(
        default=True,
        description="false where the broker user has no configure rights (production): the "
        "service then only checks that `spine topology declare` made its queues and binds them",
    )
    broker_users: dict[str, str] | None = Field(
        default=None,
        description="JSON: broker user → the service or outside system it publishes for ('*': "
        "any, like an ops user); unset, the service's own login is everyone's (development)",
    )
    dead_letter_amqp_url: str | None = Field(
        default=None,
        description="the broker login the /dead-letters routes use (spine-ops's in production, "
        "whose replays consumers accept); unset, the service's own, which in production may "
        "read and purge its dead letters but not replay them",
    )
    log_level: str = "INFO"
    # Test only: SIGKILL this process at named points (shared/crashpoints.py).
    crash_at: str | None = Field(default=None, description="TEST ONLY: crash points, comma-separated")
    crash_after: int = Field(default=1, ge=1, description="TEST ONLY: die at this pass of a point")
    max_body_bytes: int = Field(
        default=1024 * 1024, ge=1,
        description="largest request body a route accepts unless the service sets its own",
    )

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls.service:
            registry.get(cls.service)  # a misspelt name fails at import, not at first use

    @classmethod
    def registered(cls) -> registry.Service:
        """This service's entry in the registry."""
        return registry.get(cls.service)

    @field_validator("jwt_secret")
    @classmethod
    def _not_a_placeholder(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("SPINE_JWT_SECRET is a placeholder; generate one (make env)")
        return value

    @field_validator("crash_at")
    @classmethod
    def _known_points(cls, value: str | None) -> str | None:
        crashpoints.parse(value)  # an unknown name refuses the start
        return value

    @property
    def crash_points(self) -> tuple[crashpoints.CrashPoint, ...]:
        """The crash points SPINE_CRASH_AT arms (test only; none in production)."""
        return crashpoints.parse(self.crash_at)

    @field_validator("jwks_url")
    @classmethod
    def _fetchable(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        # Keys fetched in the clear could be swapped on the way; only the loopback is exempt.
        loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError("SPINE_JWKS_URL must be an https:// URL (http:// only on loopback)")
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _asymmetric(cls, value: str) -> str:
        names = [a.strip() for a in value.split(",") if a.strip()]
        refused = sorted(set(names) - JWKS_ALGORITHMS)
        if not names or refused:
            raise ValueError(f"SPINE_JWT_ALGORITHMS must name asymmetric algorithms "
                             f"({', '.join(sorted(JWKS_ALGORITHMS))}); refused: {refused}")
        return ",".join(names)

    @model_validator(mode="after")
    def _one_auth_mode(self) -> ServiceSettings:
        self.check_auth_mode()
        return self

    def check_auth_mode(self) -> None:
        """A service checks tokens one way: the development secret or the JWKS, never both."""
        if self.jwt_secret is None and self.jwks_url is None:
            raise ValueError("set SPINE_JWT_SECRET (development; `make env` writes one) "
                             "or SPINE_JWKS_URL (production)")
        if self.jwt_secret is not None and self.jwks_url is not None:
            raise ValueError("set SPINE_JWT_SECRET (development) or SPINE_JWKS_URL "
                             "(production), not both")
        # A provider's keys sign tokens for every application it serves: without an audience,
        # a token issued for some other application would be accepted here.
        if self.jwks_url is not None and not self.jwt_audience:
            raise ValueError("with SPINE_JWKS_URL, set SPINE_JWT_AUDIENCE (the audience the "
                             "identity provider issues Spine's tokens for)")

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms tokens may use in JWKS mode."""
        return tuple(self.jwt_algorithms.split(","))

    @property
    def database_name(self) -> str:
        return self.registered().database(self.db_prefix)

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of this service's own database."""
        base = self.pg_url.rstrip("/").replace("postgresql://", "postgresql+asyncpg://", 1)
        return f"{base}/{self.database_name}"

    @property
    def publishers(self) -> dict[str, str]:
        """Broker user → principal, as consumers check it (see shared.messaging.permissions)."""
        if self.broker_users is not None:
            return self.broker_users
        # Development: every service, the CLI and the tests log in as one user.
        return {broker_user(self.amqp_url): ANY}

    @property
    def port(self) -> int:
        return self.http_port or self.registered().http_port
