"""The chaos run's own parts that need no server: the seeded schedule and the audit-path judge."""

from __future__ import annotations

from typing import Any

from shared import registry
from tests.chaos.checker import _dispatch_path_problem
from tests.chaos.schedule import FaultPlan


def row(action: str, from_state: str | None, to_state: str) -> dict[str, Any]:
    return {"action": action, "from_state": from_state, "to_state": to_state}


def test_the_same_seed_draws_the_same_schedule_and_another_seed_another() -> None:
    plan = FaultPlan(duration_s=600, kills_per_service=20, rabbit_graceful=1, rabbit_kills=1,
                     pg_restarts=1)
    assert plan.draw(42) == plan.draw(42)
    assert plan.draw(42) != plan.draw(43)


def test_a_soak_schedule_kills_every_service_twenty_times_and_restarts_each_server() -> None:
    faults = FaultPlan(duration_s=600, kills_per_service=20, rabbit_graceful=1, rabbit_kills=1,
                       pg_restarts=1).draw(7)
    kills = [f.target for f in faults if f.kind == "kill"]
    assert {name: kills.count(name) for name in registry.NAMES} == dict.fromkeys(registry.NAMES, 20)
    servers = [f for f in faults if f.kind != "kill"]
    assert sorted(f.kind for f in servers) == ["pg-immediate", "rabbit-graceful", "rabbit-kill"]
    # One server fault at a time: each is over (down at most 3 s, back within a minute)
    # long before the next one starts.
    gaps = [b.at_s - a.at_s for a, b in zip(servers, servers[1:], strict=False)]
    assert all(gap > 60 for gap in gaps), gaps


def test_an_audit_trail_along_the_workflow_table_ending_in_the_dispatch_status_passes() -> None:
    trail = [row("dispatch.created", None, "pending"), row("dispatch.released", "pending", "released"),
             row("dispatch.on_hold", "released", "on_hold"), row("dispatch.released", "on_hold", "released")]
    assert _dispatch_path_problem(trail, "released") is None


def test_an_audit_trail_that_skips_a_state_or_does_not_start_with_creation_is_a_violation() -> None:
    skipped = [row("dispatch.created", None, "pending"), row("dispatch.picking", "pending", "picking")]
    assert "not in the workflow table" in (_dispatch_path_problem(skipped, "picking") or "")
    headless = [row("dispatch.released", "pending", "released")]
    assert "does not start with" in (_dispatch_path_problem(headless, "released") or "")
    stale_from = [row("dispatch.created", None, "pending"), row("dispatch.released", "pending", "released"),
                  row("dispatch.released", "pending", "released")]
    assert "while in released" in (_dispatch_path_problem(stale_from, "released") or "")
    ends_elsewhere = [row("dispatch.created", None, "pending")]
    assert "ends in pending" in (_dispatch_path_problem(ends_elsewhere, "released") or "")
