"""The CLI's settings: the services' `ServiceSettings`, read the same way, with the secret optional.

Only the commands that mint a token need SPINE_JWT_SECRET; they ask for it with `secret()`, so
`db setup` or `dlq list` work on a machine that has none. `.env` is the repository's, wherever
`./spine` is called from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from services.erp_adapter.config import Settings as ErpAdapterSettings
from shared import registry
from shared.config import PLACEHOLDER_SECRETS, ServiceSettings
from spine_cli.errors import CliError

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = REPO_ROOT / ".env"

NO_SECRET = "SPINE_JWT_SECRET is not set (environment or .env); run `make env`"  # nosec B105 # a message


class CliSettings(ServiceSettings):
    """SPINE_* from the environment, then `.env`; an empty variable counts as unset."""

    model_config = SettingsConfigDict(env_ignore_empty=True)

    jwt_secret: SecretStr | None = None  # no min_length: `secret()` says what is wrong
    order_url: str = f"http://127.0.0.1:{registry.ORDER.http_port}"
    dispatch_url: str = f"http://127.0.0.1:{registry.DISPATCH.http_port}"
    notification_url: str = f"http://127.0.0.1:{registry.NOTIFICATION.http_port}"
    erp_adapter_url: str = f"http://127.0.0.1:{registry.ERP_ADAPTER.http_port}"

    @field_validator("jwt_secret")
    @classmethod
    def _not_a_placeholder(
        cls, value: SecretStr | None
    ) -> SecretStr | None:
        # Overrides the services' check by name: `secret()` checks it for the commands that need it.
        return value

    def check_auth_mode(self) -> None:
        """Most commands need no token at all: those that mint one check in `secret()`."""

    def secret(self, *, strict: bool = True) -> str:
        """The JWT secret; a one-line error when it is missing (or, if `strict`, one the services refuse)."""
        if self.jwks_url is not None:
            raise CliError("SPINE_JWKS_URL is set: tokens come from the identity provider, and "
                           "development tokens (SPINE_JWT_SECRET) would be refused")
        if self.jwt_secret is None:
            raise CliError(NO_SECRET)
        secret = self.jwt_secret.get_secret_value()
        if strict and (len(secret) < 32 or secret.strip().lower() in PLACEHOLDER_SECRETS):
            raise CliError("SPINE_JWT_SECRET is shorter than 32 characters or a placeholder, so the "
                           "services would refuse it; set a real one (`make env` writes one to .env)")
        return secret


class NotificationCliSettings(CliSettings):
    """The notification service's database, for `spine notification people import`."""

    service: ClassVar[str] = "notification"


class ErpImportSettings(CliSettings, ErpAdapterSettings):
    """The erp_adapter's settings (its database, the import batch size) for `spine erp import`."""

    # Named again: pydantic merges the bases' configs left to right, so the service's would win.
    model_config = CliSettings.model_config


T = TypeVar("T", bound=CliSettings)


@overload
def load_settings() -> CliSettings: ...
@overload
def load_settings(cls: type[T]) -> T: ...


def load_settings(cls: type[CliSettings] = CliSettings) -> CliSettings:
    """Read the settings now; invalid values become one readable line."""
    try:
        return cls(_env_file=ENV_FILE)
    except ValidationError as exc:
        raise CliError("; ".join(_describe(error) for error in exc.errors())) from exc


def _describe(error: Any) -> str:
    name = f"SPINE_{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
    if "SECRET" in name:
        return f"{name}: {error['msg']}"
    if error["type"] == "string_pattern_mismatch":
        return f"{name}={error['input']!r} must match {error['ctx']['pattern']}"
    return f"{name}={error['input']!r}: {error['msg']}"


def redact(url: str) -> str:
    """`url` with its password replaced, so it can be printed in an error."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
