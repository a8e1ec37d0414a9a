"""What `spine` accepts and refuses before it talks to any server, and how it says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from shared.tokens import JwtVerifier
from spine_cli.errors import CliError
from spine_cli.main import cli
from tests.unit.cli.conftest import Spine

TOP_LEVEL = ["db", "topology", "broker", "token", "dlq", "submit-order", "publish-raw", "watch",
             "dispatch", "erp", "notification", "timeline"]


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
    return paths


def assert_one_line_error(result: object, code: int, *fragments: str) -> None:
    exit_code, stderr, stdout = result.exit_code, result.stderr, result.stdout  # type: ignore[attr-defined]
    assert exit_code == code, (exit_code, stderr)
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("spine: error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --------------------------------------------------------------------------- help


def test_the_help_lists_every_command_in_the_order_a_reader_needs(spine: Spine) -> None:
    result = spine("--help")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.stdout.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == TOP_LEVEL


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_every_command_explains_itself_with_help(spine: Spine, path: tuple[str, ...]) -> None:
    result = spine(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: spine {' '.join(path)} ")
    assert result.stderr == ""


def test_the_commands_that_existed_before_all_exist(spine: Spine) -> None:
    expected = {("db", "setup"), ("db", "drop"), ("topology", "declare"), ("token",),
                ("dlq", "list"), ("dlq", "replay"), ("submit-order",), ("publish-raw",),
                ("watch",), ("dispatch", "list"), ("dispatch", "move"), ("dispatch", "history"),
                ("erp", "import")}
    assert expected <= set(command_paths())


def test_no_command_shows_the_help_and_exits_2(spine: Spine) -> None:
    result = spine()
    assert result.exit_code == 2
    assert "Commands:" in result.stderr


def test_an_unknown_command_is_one_line_with_exit_code_2(spine: Spine) -> None:
    assert_one_line_error(spine("bogus"), 2, "No such command 'bogus'", "spine --help")


def test_a_usage_error_points_at_the_help_of_its_own_command(spine: Spine) -> None:
    assert_one_line_error(spine("dispatch", "move", "d-1"), 2, "STATUS", "'spine dispatch move --help'")


def test_shell_completion_offers_commands_and_roles(spine: Spine) -> None:
    commands = spine(env={"_SPINE_COMPLETE": "bash_complete", "COMP_WORDS": "spine d", "COMP_CWORD": "1"})
    assert commands.exit_code == 0
    assert {"db", "dlq", "dispatch"} <= {line.split(",")[1] for line in commands.stdout.split()}
    roles = spine(env={"_SPINE_COMPLETE": "bash_complete",
                       "COMP_WORDS": "spine dispatch move d-1 released --as pl", "COMP_CWORD": "6"})
    assert roles.stdout.split() == ["plain,planner"]


def test_completion_scripts_are_generated_for_bash(spine: Spine) -> None:
    result = spine(env={"_SPINE_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "complete -o nosort -F _spine_completion spine" in result.stdout


# --------------------------------------------------------------------------- token


def test_token_prints_a_jwt_the_services_accept_with_the_roles_asked_for(
    spine: Spine, secret: str
) -> None:
    result = spine("token", "--role", "planner", "--role", "ops", "--role", "planner")
    assert result.exit_code == 0, result.output
    principal = JwtVerifier(secret).verify(result.stdout.strip())
    assert principal.sub == "dev-planner"
    assert principal.roles == {"planner", "ops"}


def test_token_takes_the_secret_from_the_repositorys_env_file(spine: Spine, env_file: Path) -> None:
    other = "f" * 64
    env_file.write_text(f"# written by make env\nexport SPINE_JWT_SECRET='{other}'\n")
    result = spine("token", "--role", "ops", "--sub", "u-7", env={"SPINE_JWT_SECRET": None})
    assert result.exit_code == 0, result.output
    assert JwtVerifier(other).verify(result.stdout.strip()).sub == "u-7"


def test_the_environment_wins_over_the_env_file(spine: Spine, env_file: Path, secret: str) -> None:
    env_file.write_text(f"SPINE_JWT_SECRET={'e' * 64}\n")
    result = spine("token", "--role", "ops")
    assert JwtVerifier(secret).verify(result.stdout.strip()).roles == {"ops"}


def test_token_without_a_secret_says_how_to_get_one_and_exits_1(spine: Spine) -> None:
    result = spine("token", "--role", "ops", env={"SPINE_JWT_SECRET": None})
    assert_one_line_error(result, 1, "SPINE_JWT_SECRET is not set", "make env")


@pytest.mark.parametrize("bad", ["changeme", "too-short"])
def test_token_refuses_a_secret_the_services_would_refuse(spine: Spine, bad: str) -> None:
    result = spine("token", "--role", "ops", env={"SPINE_JWT_SECRET": bad})
    assert_one_line_error(result, 1, "shorter than 32 characters or a placeholder")


def test_token_refuses_an_unknown_role_and_names_the_known_ones(spine: Spine) -> None:
    assert_one_line_error(spine("token", "--role", "boss"), 2, "unknown role 'boss'", "planner")


def test_token_needs_a_role(spine: Spine) -> None:
    assert_one_line_error(spine("token"), 2, "Missing option '--role'")


def test_token_refuses_a_lifetime_that_is_not_positive(spine: Spine) -> None:
    assert_one_line_error(spine("token", "--role", "ops", "--ttl-hours", "0"), 2, "--ttl-hours")


def test_debug_shows_the_traceback_instead_of_one_line(spine: Spine) -> None:
    result = spine("--debug", "token", "--role", "ops", env={"SPINE_JWT_SECRET": None})
    assert isinstance(result.exception, CliError)
    assert "spine: error" not in result.stderr


# --------------------------------------------------------------------------- settings


def test_a_malformed_setting_is_named_in_one_line_before_anything_connects(spine: Spine) -> None:
    result = spine("dlq", "list", env={"SPINE_NAMESPACE": "Not A Namespace"})
    assert_one_line_error(result, 1, "SPINE_NAMESPACE='Not A Namespace' must match")


def test_an_empty_setting_counts_as_unset(spine: Spine) -> None:
    result = spine("token", "--role", "ops", env={"SPINE_NAMESPACE": "", "SPINE_JWT_ISSUER": ""})
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- db


def test_db_drop_refuses_without_yes_and_names_all_four_databases(spine: Spine) -> None:
    result = spine("db", "drop", "--prefix", "spine_x")
    assert_one_line_error(result, 2, "refusing to drop spine_x_order, spine_x_dispatch, "
                          "spine_x_notification, spine_x_erp and their roles without --yes")


@pytest.mark.parametrize("command", [("db", "drop", "--yes"), ("db", "setup")])
def test_db_commands_refuse_a_prefix_that_is_not_a_database_name(
    spine: Spine, command: tuple[str, ...]
) -> None:
    assert_one_line_error(spine(*command, "--prefix", "Spine-X"), 2, "--prefix 'Spine-X' must match")


def test_db_setup_offers_only_the_registered_services(spine: Spine) -> None:
    assert_one_line_error(spine("db", "setup", "--service", "erp"), 2, "'erp' is not one of",
                          "'erp_adapter'")


# --------------------------------------------------------------------------- dlq


def test_dlq_replay_needs_one_of_message_id_or_all(spine: Spine) -> None:
    assert_one_line_error(spine("dlq", "replay", "--queue", "order.order-submitted"), 2,
                          "one of --message-id or --all is required")


def test_dlq_replay_refuses_both_message_id_and_all(spine: Spine) -> None:
    result = spine("dlq", "replay", "--queue", "q", "--all", "--message-id", "m-1")
    assert_one_line_error(result, 2, "--message-id is not allowed with --all")


def test_dlq_list_refuses_a_limit_below_one(spine: Spine) -> None:
    assert_one_line_error(spine("dlq", "list", "--limit", "0"), 2, "--limit")


# --------------------------------------------------------------------------- submit-order


@pytest.mark.parametrize(("line", "why"), [
    ("P-200", "expected PRODUCT:QTY[:UOM]"),
    (":5", "expected PRODUCT:QTY[:UOM]"),
    ("P-200:five", "quantity 'five' is not a number"),
])
def test_submit_order_refuses_a_malformed_line(spine: Spine, line: str, why: str) -> None:
    result = spine("submit-order", "--system", "mes", "--customer", "C-100", "--line", line)
    assert_one_line_error(result, 2, "--line", why)


def test_submit_order_refuses_a_system_name_outside_systems_may_not_have(spine: Spine) -> None:
    result = spine("submit-order", "--system", "MES", "--customer", "C-100", "--line", "P-200:1")
    assert_one_line_error(result, 2, "'MES': a system name is")


def test_submit_order_refuses_a_ship_to_without_five_parts(spine: Spine) -> None:
    result = spine("submit-order", "--system", "mes", "--customer", "C-100", "--line", "P-200:1",
                   "--ship-to", "Dock 4;Augsburg")
    assert_one_line_error(result, 2, "5 parts, got 2")


def test_submit_order_refuses_an_order_that_breaks_the_contract_before_connecting(
    spine: Spine,
) -> None:
    # The broker URL points nowhere: the refusal must come first, from the contract.
    result = spine("submit-order", "--system", "mes", "--customer", "C-100", "--line", "P-200:0",
                   env={"SPINE_AMQP_URL": "amqp://nobody@invalid.invalid:1/"})
    assert_one_line_error(result, 2, "the order breaks the contract",
                          "lines.0.quantity", "--unchecked")


def test_submit_order_takes_a_date_in_iso_format_only(spine: Spine) -> None:
    result = spine("submit-order", "--system", "mes", "--customer", "C-100", "--line", "P-200:1",
                   "--ship-date", "01/12/2026")
    assert_one_line_error(result, 2, "--ship-date")


def test_submit_order_refuses_times_below_one(spine: Spine) -> None:
    result = spine("submit-order", "--system", "mes", "--customer", "C-100", "--line", "P-200:1",
                   "--times", "0")
    assert_one_line_error(result, 2, "--times")


# --------------------------------------------------------------------------- the rest


def test_dispatch_move_refuses_a_malformed_packed_line(spine: Spine) -> None:
    result = spine("dispatch", "move", "d-1", "packed", "--as", "warehouse", "--line", "1:4")
    assert_one_line_error(result, 2, "'1:4' is not LINE_NO=QUANTITY")


def test_the_backbone_commands_exist(spine: Spine) -> None:
    expected = {("dispatch", name) for name in ("exception", "exceptions", "acknowledge",
                                                "resolve", "correct", "approvals", "approve",
                                                "reject")}
    assert expected <= set(command_paths())


@pytest.mark.parametrize(("change", "problem"), [
    ("carrier", "'carrier' is not FIELD=VALUE"),
    ("price=3", "'price' cannot be corrected"),
    ("line:x=3", "'line:x' cannot be corrected"),
])
def test_dispatch_correct_refuses_a_change_it_cannot_send(spine: Spine, change: str,
                                                         problem: str) -> None:
    result = spine("dispatch", "correct", "d-1", "--as", "shipping", "--set", change,
                   "--reason", "typo")
    assert_one_line_error(result, 2, problem)


def test_dispatch_approve_needs_the_deciding_supervisor(spine: Spine) -> None:
    result = spine("dispatch", "approve", "a-1")
    assert_one_line_error(result, 2, "--sub")


def test_dispatch_move_needs_a_role_the_services_know(spine: Spine) -> None:
    result = spine("dispatch", "move", "d-1", "released", "--as", "boss")
    assert_one_line_error(result, 2, "unknown role 'boss'")


def test_dispatch_commands_without_a_secret_say_so(spine: Spine) -> None:
    result = spine("dispatch", "list", env={"SPINE_JWT_SECRET": None})
    assert_one_line_error(result, 1, "SPINE_JWT_SECRET is not set")


def test_watch_refuses_seconds_that_are_not_positive(spine: Spine) -> None:
    assert_one_line_error(spine("watch", "--seconds", "0"), 2, "--seconds")


def test_erp_import_needs_a_file(spine: Spine) -> None:
    assert_one_line_error(spine("erp", "import"), 2, "Missing argument 'FILES...'")


def test_erp_import_refuses_a_batch_size_below_one(spine: Spine) -> None:
    assert_one_line_error(spine("erp", "import", "x.csv", "--batch-size", "0"), 2, "--batch-size")


def test_erp_import_offers_only_the_kinds_of_export_it_reads(spine: Spine) -> None:
    assert_one_line_error(spine("erp", "import", "x.csv", "--kind", "orders"), 2, "'orders' is not one of")


def test_help_imports_none_of_the_heavy_libraries_so_it_answers_at_once() -> None:
    # In a fresh interpreter: this test process has imported all of them long ago.
    probe = ("import sys; from spine_cli.main import main; main(['dispatch', 'move', '--help']); "
             "print([m for m in ('pydantic', 'faststream', 'alembic', 'sqlalchemy', 'aio_pika', "
             "'httpx', 'jwt') if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_token_refuses_when_a_jwks_is_configured_as_the_services_would_refuse_its_tokens(
    spine: Spine,
) -> None:
    result = spine("token", "--role", "ops", env={"SPINE_JWKS_URL": "https://idp.example/jwks"})
    assert_one_line_error(result, 1, "SPINE_JWKS_URL is set", "identity provider")


def test_dispatch_move_refuses_to_mint_a_development_token_when_a_jwks_is_configured(
    spine: Spine,
) -> None:
    result = spine("dispatch", "move", "d-1", "released", "--as", "planner",
                   env={"SPINE_JWKS_URL": "https://idp.example/jwks"})
    assert_one_line_error(result, 1, "SPINE_JWKS_URL is set")
