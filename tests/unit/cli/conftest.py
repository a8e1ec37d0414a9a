"""The CLI in-process through click's CliRunner: parsing, help, validation and exit codes, no servers.

Every test runs with no SPINE_* variable but a fresh secret, and with an empty `.env` of its
own instead of the repository's, so what a developer has configured cannot change the outcome.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from spine_cli import settings as cli_settings
from spine_cli.main import cli

Spine = Callable[..., Result]


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The `.env` the CLI reads in this test (empty until the test writes it)."""
    path = tmp_path / ".env"
    monkeypatch.setattr(cli_settings, "ENV_FILE", path)
    return path


@pytest.fixture
def spine(env_file: Path, secret: str, monkeypatch: pytest.MonkeyPatch) -> Spine:
    """`spine("token", "--role", "ops")` runs the CLI and returns click's Result."""
    for key in list(os.environ):
        if key.startswith("SPINE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SPINE_JWT_SECRET", secret)
    runner = CliRunner()

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        return runner.invoke(cli, list(args), env=env)

    return run
