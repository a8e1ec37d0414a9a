"""A model-based test of the dispatch backbone against the real database.

Hypothesis drives random sequences of commands — transitions, exceptions opened, acknowledged,
resolved, escalation ticks, approval requests and decisions, corrections — by random people of
random roles through the real handlers and unit of work on a real PostgreSQL database. A small
model, written from the tables' data (`WORKFLOW.rules`, the roles of each edge) and the
design's rules for exceptions and approvals, says what each command must do. After every step:
the stored dispatch, exceptions and approvals match the model; the dispatch's audit history and
its outbox are exactly the actions the model expected, in order; and a command the model says
is refused changed no table at all.

Runs `EXAMPLES` sequences of up to `STEPS` steps in `make test` (fixed derandomised seed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from services.dispatch.domain import (
    EXCEPTION_OWNER,
    OPEN_STATES,
    WORKFLOW,
    OrderSnapshot,
    Status,
)
from services.dispatch.handlers import (
    AcknowledgeException,
    CreateDispatch,
    DecideApproval,
    EscalateOverdue,
    OpenException,
    RequestCorrection,
    ResolveException,
    TransitionDispatch,
    handle,
)
from services.dispatch.unit_of_work import sql_unit_of_work
from shared.db.engine import make_engine
from shared.domain import ROLES
from shared.workflow import Refusal
from tests.conftest import Servers, service_database, unique_name

pytestmark = pytest.mark.integration

EXAMPLES = 60
STEPS = 50
T = TypeVar("T")
LINES = [{"line_no": 1, "product_id": "P-1", "quantity": "5", "uom": "EA"}]
PEOPLE = [(f"u-{i}", role) for i, role in enumerate(ROLES)] + [("u-boss", "supervisor")]
NOW = datetime(2027, 1, 1, 12, tzinfo=UTC)


@dataclass
class ModelException:
    owner: str
    blocking: bool
    status: str = "open"
    escalated_from: str | None = None
    overdue: bool = False

    def owned_by(self, user: str, role: str) -> bool:
        return any(o == user or o == f"role:{role}" for o in (self.owner, self.escalated_from) if o)


@dataclass
class ModelApproval:
    kind: str
    requested_by: str
    requested_role: str
    target: str | None
    dispatch_version: int
    status: str = "pending"


@dataclass
class ModelDispatch:
    id: str
    status: str = "pending"
    held_from: str | None = None
    version: int = 1
    exceptions: dict[str, ModelException] = field(default_factory=dict)
    approvals: dict[str, ModelApproval] = field(default_factory=dict)
    actions: list[str] = field(default_factory=lambda: ["dispatch.created"])

    def blocking(self) -> int:
        return sum(1 for x in self.exceptions.values() if x.blocking and x.status != "resolved")

    def roles_of(self, user: str, role: str) -> frozenset[str]:
        owner = any(x.owned_by(user, role) for x in self.exceptions.values()
                    if x.status != "resolved")
        return frozenset({role, EXCEPTION_OWNER} if owner else {role})


def _table_allows(d: ModelDispatch, target: str, roles: frozenset[str]) -> bool:
    """The table's answer: an edge from here to `target` whose roles and guards admit it."""
    rule = WORKFLOW.rule(Status(d.status), Status(target))
    if rule is None or not rule.roles & roles:
        return False
    if target == "released" and d.blocking():
        return False
    return not (d.status == "on_hold" and (d.held_from != target or d.blocking()))


SUPERVISORS = [p for p in PEOPLE if p[1] == "supervisor"]
# command → (weight, its arguments); `move` also draws from the step's data (its edge).
_ACTIONS: dict[str, tuple[int, dict[str, Any]]] = {
    "move": (6, {"which": st.integers(0, 1), "short": st.booleans(),
                 "stale": st.integers(0, 9)}),
    "open_exception": (1, {"which": st.integers(0, 1), "who": st.sampled_from(PEOPLE),
                           "blocks": st.integers(0, 3), "overdue": st.booleans(),
                           "owner": st.sampled_from(["u-1", "u-2", "role:warehouse",
                                                     "role:planner"])}),
    "acknowledge": (1, {"pick": st.integers(0, 50), "who": st.sampled_from(PEOPLE)}),
    "resolve": (2, {"pick": st.integers(0, 50),
                    "who": st.sampled_from(SUPERVISORS + PEOPLE)}),
    "tick": (1, {}),
    "correct": (2, {"which": st.integers(0, 1),
                    "who": st.sampled_from([("u-3", "shipping"), *PEOPLE])}),
    # The first supervisor is the one the walk's requests come from: the second decides first.
    "decide": (3, {"pick": st.integers(0, 50), "who": st.sampled_from(SUPERVISORS[::-1] + PEOPLE),
                   "approve": st.booleans()}),
}

class DispatchBackbone(RuleBasedStateMachine):
    """The state machine hypothesis explores; `Harness` gives it a database and a loop."""

    harness: Harness
    ACTIONS = _ACTIONS
    examples = 0
    # What the exploration reached (command, accepted), over all examples: checked at the end,
    # so that a change of the strategies cannot quietly stop it reaching the hard cases.
    reached: Counter[tuple[str, bool]] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.dispatches: list[ModelDispatch] = []
        self.now = NOW

    # ------------------------------------------------------------------ plumbing

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.harness.loop.run_until_complete(coro)

    def attempt(self, cmd: Any, *, accepted: bool) -> Any:
        """Run `cmd`; it must be refused exactly when the model says, and then write nothing."""
        before = self.run(self.harness.counts())
        DispatchBackbone.reached[(type(cmd).__name__, accepted)] += 1
        try:
            result = self.run(handle(cmd, self.harness.uow))
        except Refusal as refusal:
            assert not accepted, f"{cmd} refused: {refusal.detail}"
            assert self.run(self.harness.counts()) == before, f"{cmd} was refused but wrote"
            return None
        assert accepted, f"{cmd} was accepted; the model refuses it"
        return result

    # ------------------------------------------------------------------ rules

    @initialize()
    def two_dispatches(self) -> None:
        # The timer looks at the whole database, where earlier examples' exceptions stay (the
        # audit log refuses TRUNCATE): each example lives further in the past than the one
        # before, so nothing of theirs is ever due at its clock.
        DispatchBackbone.examples += 1
        self.now = NOW - timedelta(days=10 * DispatchBackbone.examples)
        for _ in range(2):
            dispatch_id = self.run(handle(CreateDispatch(
                event_id=str(uuid.uuid4()), consumer="test.model", correlation_id=uuid.uuid4(),
                order=OrderSnapshot(order_id=f"o-{uuid.uuid4().hex[:8]}", external_ref=None,
                                    source=None, customer_id="C-1",
                                    requested_ship_date=date(2027, 1, 15), priority="normal",
                                    ship_to={"name": "x"}, lines=LINES)), self.harness.uow))
            self.dispatches.append(ModelDispatch(dispatch_id))

    def move(self, which: int, data: st.DataObject, short: bool, stale: int) -> None:
        d = sorted(self.dispatches, key=lambda x: (x.status in ("shipped", "cancelled"),
                                                   x.status == "on_hold"))[which]
        # Mostly an edge of the table from where the dispatch is, by one of its roles (so that
        # the walk goes somewhere); sometimes anything, by anyone.
        # (From hold the way back is resolving its exceptions: the edges back are guarded.)
        edges = [r for (src, _), r in WORKFLOW.rules.items()
                 if src == d.status and src != Status.ON_HOLD]
        # (Hypothesis leans to small values: the small ones are the walk along the table.)
        if edges and data.draw(st.integers(0, 3)) < 3:
            edge = data.draw(st.sampled_from(edges))
            target = edge.target.value
            people = [p for p in PEOPLE if p[1] in edge.roles] or PEOPLE
            who = data.draw(st.sampled_from(people))
        else:
            target = data.draw(st.sampled_from([s.value for s in Status]))
            who = data.draw(st.sampled_from(PEOPLE))
        stale_read = stale == 9
        user, role = who
        evidence: dict[str, Any] = {}
        if target == "packed":
            evidence = {"lines": [{"line_no": 1, "quantity": "3" if short else "5"}]}
        elif target == "shipped":
            evidence = {"carrier": "DHL", "tracking_number": "T-1"}
        elif target == "on_hold":
            evidence = {"reason_code": "stock_shortage", "owner": user,
                        "due_at": (self.now + timedelta(days=1)).isoformat()}
        roles = d.roles_of(user, role)
        may_target = bool(roles & WORKFLOW.roles_for_target(Status(target)))
        accepted = not stale_read and may_target and _table_allows(d, target, roles)
        moved = self.attempt(TransitionDispatch(
            dispatch_id=uuid.UUID(d.id), to=Status(target), actor_id=user,
            roles=frozenset({role}), expected_version=d.version + (1 if stale_read else 0),
            reason="because", evidence=evidence), accepted=accepted)
        if moved is None:
            return
        d.version += 1
        # Four eyes as the design names them (not read from the table under test).
        approval = {("picking", "cancelled"): "cancel", ("packed", "cancelled"): "cancel",
                    ("picking", "packed"): "short_pack" if short else None}.get((d.status, target))
        if approval:
            d.approvals[moved.approval.id] = ModelApproval(approval, user, role, target, d.version)
            d.actions.append("dispatch.approval.requested")
        elif target == "on_hold":
            exception_id = self.run(self.harness.newest_exception(d.id))
            d.exceptions[exception_id] = ModelException(owner=user, blocking=True)
            d.held_from, d.status = d.status, target
            d.actions += ["dispatch.exception.opened", "dispatch.on_hold"]
        else:
            d.held_from = None
            d.status = target
            d.actions.append(f"dispatch.{target}")

    def open_exception(self, which: int, who: tuple[str, str], blocks: int, owner: str,
                       overdue: bool) -> None:
        blocking = blocks == 3  # one in four: a held dispatch stops the walk until resolved
        d = self.dispatches[which]
        user, role = who
        may_open = role in {"planner", "warehouse", "shipping", "supervisor"}
        place = (d.status in OPEN_STATES or d.status == "on_hold"
                 or (d.status == "shipped" and not blocking))
        change = self.attempt(OpenException(
            dispatch_id=uuid.UUID(d.id), actor_id=user, roles=frozenset({role}),
            reason_code="damaged_goods", owner=owner, blocking=blocking,
            due_at=self.now + timedelta(days=-1 if overdue else 1)), accepted=may_open and place)
        if change is None:
            return
        d.version += 1
        d.exceptions[change.exception.id] = ModelException(owner, blocking, overdue=overdue)
        d.actions.append("dispatch.exception.opened")
        if blocking and d.status in OPEN_STATES:
            d.held_from, d.status = d.status, "on_hold"
            d.actions.append("dispatch.on_hold")

    def _an_exception(self, pick: int) -> tuple[ModelDispatch, str, ModelException] | None:
        """Mostly (small picks) an unresolved one, blocking first; then any at all."""
        found = sorted(((d, i, x) for d in self.dispatches for i, x in d.exceptions.items()),
                       key=lambda f: (f[2].status == "resolved", not f[2].blocking))
        return found[pick % len(found)] if found else None

    def acknowledge(self, pick: int, who: tuple[str, str]) -> None:
        chosen = self._an_exception(pick)
        if chosen is None:
            return
        d, exception_id, x = chosen
        user, role = who
        allowed = (x.owned_by(user, role) or role == "supervisor") and x.status == "open"
        if self.attempt(AcknowledgeException(uuid.UUID(exception_id), user, frozenset({role})),
                        accepted=allowed) is None:
            return
        d.version += 1
        x.status = "acknowledged"
        d.actions.append("dispatch.exception.acknowledged")

    def resolve(self, pick: int, who: tuple[str, str]) -> None:
        chosen = self._an_exception(pick)
        if chosen is None:
            return
        d, exception_id, x = chosen
        user, role = who
        allowed = (x.owned_by(user, role) or role == "supervisor") and x.status != "resolved"
        if self.attempt(ResolveException(uuid.UUID(exception_id), user, frozenset({role}),
                                         resolution="sorted"), accepted=allowed) is None:
            return
        d.version += 1
        x.status = "resolved"
        d.actions.append("dispatch.exception.resolved")
        if d.status == "on_hold" and x.blocking and not d.blocking():
            assert d.held_from is not None
            d.status, d.held_from = d.held_from, None
            d.actions.append(f"dispatch.{d.status}")

    def tick(self) -> None:
        escalated = self.run(handle(EscalateOverdue(now=self.now), self.harness.uow))
        expected = 0
        for d in self.dispatches:
            due = [x for x in d.exceptions.values()
                   if x.overdue and x.status in ("open", "acknowledged")]
            for x in due:
                x.status, x.escalated_from, x.owner = "escalated", x.owner, "role:supervisor"
                d.actions.append("dispatch.exception.escalated")
            if due:
                d.version += 1
            expected += len(due)
        assert escalated == expected

    def correct(self, which: int, who: tuple[str, str]) -> None:
        d = sorted(self.dispatches, key=lambda x: x.status != "shipped")[which]
        user, role = who
        allowed = role in {"warehouse", "shipping", "supervisor"} and d.status == "shipped"
        moved = self.attempt(RequestCorrection(
            dispatch_id=uuid.UUID(d.id), actor_id=user, roles=frozenset({role}),
            changes=[{"field": "carrier", "to": f"C-{d.version}"}], reason="wrong carrier"),
            accepted=allowed)
        if moved is None:
            return
        d.version += 1
        d.approvals[moved.approval.id] = ModelApproval("correction", user, role, None, d.version)
        d.actions.append("dispatch.approval.requested")

    def decide(self, pick: int, who: tuple[str, str], approve: bool) -> None:
        found = sorted(((d, i, a) for d in self.dispatches for i, a in d.approvals.items()),
                       key=lambda f: f[2].status != "pending")
        if not found:
            return
        d, approval_id, a = found[pick % len(found)]
        user, role = who
        applies = approve and a.kind != "correction"
        if role == "supervisor" and user == a.requested_by and a.status == "pending":
            DispatchBackbone.reached[("self-approval", False)] += 1
        if approve and a.status == "pending" and d.version != a.dispatch_version:
            DispatchBackbone.reached[("approval after the dispatch moved on", False)] += 1
        allowed = (role == "supervisor" and user != a.requested_by and a.status == "pending"
                   and (not approve or d.version == a.dispatch_version)
                   and (not applies or _table_allows(
                       d, a.target or "", frozenset({a.requested_role}))))
        if self.attempt(DecideApproval(uuid.UUID(approval_id), approve, user,
                                       frozenset({role}), note="ok"), accepted=allowed) is None:
            return
        d.version += 1
        a.status = "approved" if approve else "rejected"
        d.actions.append(f"dispatch.approval.{a.status}")
        if approve and a.kind == "correction":
            d.actions.append("dispatch.corrected")
        elif approve:
            assert a.target is not None
            d.status, d.held_from = a.target, None
            d.actions.append(f"dispatch.{a.target}")

    # Each step is one command, drawn with these weights (how often a plant does it), then its
    # arguments: mostly moves along the table, so that journeys get far enough for approvals,
    # corrections and escalations to happen.
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([n for n, (w, _) in self.ACTIONS.items()
                                          for _ in range(w)]), label="command")
        _, strategies = self.ACTIONS[name]
        arguments = {k: data.draw(v, label=k) for k, v in strategies.items()}
        if name == "move":
            arguments["data"] = data
        getattr(self, name)(**arguments)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def stored_state_history_and_outbox_match_the_model(self) -> None:
        for d in self.dispatches:
            stored = self.run(self.harness.stored(d.id))
            assert (stored["status"], stored["held_from"], stored["version"]) == (
                d.status, d.held_from, d.version)
            assert stored["exceptions"] == {i: (x.status, x.owner, x.escalated_from)
                                            for i, x in d.exceptions.items()}
            assert stored["approvals"] == {i: a.status for i, a in d.approvals.items()}
            assert stored["audit"] == d.actions, "the history is every action, once, in order"
            assert stored["outbox"] == d.actions, "every action published, once, in order"


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    uow: Any
    db: asyncpg.Connection

    async def counts(self) -> tuple[int, ...]:
        return tuple([await self.db.fetchval(f"SELECT count(*) FROM {t}")  # nosec B608 # fixed names
                      for t in ("dispatch", "dispatch_exception", "dispatch_approval",
                                "audit_log", "outbox", "inbox")])

    async def newest_exception(self, dispatch_id: str) -> str:
        return str(await self.db.fetchval(
            "SELECT id FROM dispatch_exception WHERE dispatch_id = $1 "
            "ORDER BY opened_at DESC, ctid DESC LIMIT 1", uuid.UUID(dispatch_id)))

    async def stored(self, dispatch_id: str) -> dict[str, Any]:
        key = uuid.UUID(dispatch_id)
        row = await self.db.fetchrow("SELECT status, held_from, version FROM dispatch WHERE id = $1",
                                     key)
        assert row is not None
        exceptions = {str(r["id"]): (r["status"], r["owner"], r["escalated_from"])
                      for r in await self.db.fetch(
                          "SELECT id, status, owner, escalated_from FROM dispatch_exception "
                          "WHERE dispatch_id = $1", key)}
        approvals = {str(r["id"]): r["status"] for r in await self.db.fetch(
            "SELECT id, status FROM dispatch_approval WHERE dispatch_id = $1", key)}
        audit = [r["action"] for r in await self.db.fetch(
            "SELECT action FROM audit_log WHERE entity_type = 'dispatch' AND entity_id = $1 "
            "ORDER BY id", dispatch_id)]
        outbox = [r["routing_key"] for r in await self.db.fetch(
            "SELECT routing_key FROM outbox WHERE body::jsonb->'data'->>'dispatch_id' = $1 "
            "ORDER BY id", dispatch_id)]
        return {**dict(row), "exceptions": exceptions, "approvals": approvals, "audit": audit,
                "outbox": outbox}


def test_random_command_sequences_keep_state_history_and_outbox_as_the_model_says(
    servers: Servers,
) -> None:
    from services.dispatch.config import Settings

    # Hypothesis's steps are plain calls: each runs its coroutine to completion on this loop.
    loop = asyncio.new_event_loop()
    prefix = unique_name("model")
    database = service_database(servers.pg_url, "dispatch", prefix)
    password = loop.run_until_complete(database.__aenter__())
    engine = db = None
    try:
        config = Settings(_env_file=None, pg_url=servers.pg_url, db_prefix=prefix,
                          db_password=password, jwt_secret="x" * 40)
        engine = make_engine(config.database_url, pool_size=2, service="dispatch-model")
        db = loop.run_until_complete(asyncpg.connect(f"{servers.pg_url}/{config.database_name}"))
        DispatchBackbone.harness = Harness(loop, sql_unit_of_work(engine), db)
        # No shrinking: the database keeps every example's rows, so a replayed sequence meets
        # another state and shrinking would only take minutes to say "flaky"; the failing
        # sequence is reported as it was found.
        machine = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                           derandomize=True, database=None,
                           phases=[Phase.explicit, Phase.generate],
                           suppress_health_check=list(HealthCheck))(DispatchBackbone)
        machine.TestCase().runTest()
        reached = DispatchBackbone.reached
        print(f"model-based run: {DispatchBackbone.examples} examples, "
              f"{sum(reached.values())} commands: {sorted(reached.items())}")
        for case in (("TransitionDispatch", True), ("TransitionDispatch", False),
                     ("OpenException", True), ("AcknowledgeException", True),
                     ("ResolveException", True), ("ResolveException", False),
                     ("RequestCorrection", True), ("DecideApproval", True),
                     ("DecideApproval", False), ("self-approval", False),
                     ("approval after the dispatch moved on", False)):
            assert reached[case], f"the exploration never reached {case}: {sorted(reached.items())}"
    finally:
        if db is not None:
            loop.run_until_complete(db.close())
        if engine is not None:
            loop.run_until_complete(engine.dispose())
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()
