"""A workflow as data: a table of (from, to) → who, what evidence, which guards; one `decide()`.

Each service declares its table once (`services/<name>/domain.py`) with these pieces; the same
table drives the API's permission checks, the audit rows and event names, and the tests. The
refusals are the domain's vocabulary for "no": each maps to one HTTP status at the edge
(`shared/web/problems.py`). Standard library only, like the domains that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

SYSTEM = "system"  # the role of a service acting on its own (an event, a timer), never a person's

# ---------------------------------------------------------------------------- refusals


class Refusal(Exception):
    """The domain said no; nothing was written. `extra` adds fields to the problem response."""

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(Refusal):
    """The thing named does not exist."""


class Forbidden(Refusal):
    """The caller's roles do not allow this."""


class StaleVersion(Refusal):
    """The caller decided on a version that is no longer current."""


class NotAllowedFromState(Refusal):
    """The workflow has no such edge from the current state."""


class GuardFailed(Refusal):
    """The edge exists, but a condition of it does not hold now."""


class Conflict(Refusal):
    """The request clashes with what exists (a taken reference, a reused key)."""


class InvalidInput(Refusal):
    """What was sent cannot be accepted; `problems` says why, one readable line each."""

    def __init__(self, problems: Iterable[str], *, detail: str | None = None, **extra: Any) -> None:
        self.problems = list(problems)
        super().__init__(detail or "; ".join(self.problems), **extra)


class UnsupportedFormat(InvalidInput):
    """What was sent is in a format this service does not read at all (not merely wrong)."""


# ---------------------------------------------------------------------------- the table

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E")


@dataclass(frozen=True)
class Guard(Generic[E]):
    """A named condition of an edge: `check` returns None, or the refusal a person can read."""

    name: str
    check: Callable[[E], str | None]
    refusal: type[Refusal] = GuardFailed


@dataclass(frozen=True)
class Evidence(Generic[E]):
    """What the caller must show to take an edge (`shape` documents it)."""

    name: str
    shape: str
    # (entity, evidence, caller's roles) → the evidence normalised for storage; raises
    # `InvalidInput` listing every problem.
    check: Callable[[E, Mapping[str, Any], frozenset[str]], dict[str, Any]]
    # The keys it may have: any other is refused, never silently dropped.
    fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Rule(Generic[S, E]):
    """One allowed edge; `source` None is the creation of the aggregate."""

    source: S | None
    target: S
    roles: frozenset[str]
    evidence: Evidence[E] | None = None
    guards: tuple[Guard[E], ...] = ()
    reason_required: bool = False
    approval: str | None = None  # the approval kind when a second person must agree
    # When only some requests of the edge need that approval: (entity, stored evidence) → True.
    approval_when: Callable[[E, dict[str, Any]], bool] | None = None

    def needs_approval(self, entity: E, evidence: dict[str, Any]) -> str | None:
        """The approval kind this request of the edge needs, or None."""
        if self.approval and (self.approval_when is None or self.approval_when(entity, evidence)):
            return self.approval
        return None

    def acting_role(self, roles: frozenset[str]) -> str:
        """The role the audit names: the first of the caller's roles this edge allows."""
        allowed = sorted(self.roles & roles)
        return allowed[0] if allowed else (min(roles) if roles else "none")


@dataclass(frozen=True)
class Decision(Generic[S, E]):
    """An accepted request: the rule taken, the role acted in, the evidence as stored."""

    rule: Rule[S, E]
    acting_role: str
    evidence: dict[str, Any] = field(default_factory=dict)
    # Set when the request is valid but is only a request: a second person must approve it.
    approval: str | None = None


S_co = TypeVar("S_co", bound=StrEnum, covariant=True)


class Stateful(Protocol[S_co]):
    @property
    def status(self) -> S_co: ...

    @property
    def version(self) -> int: ...


ES = TypeVar("ES", bound=Stateful[Any])


class Workflow(Generic[S, ES]):
    """The table of one aggregate's workflow, and the one function that decides a request."""

    def __init__(self, entity: str, rules: Iterable[Rule[S, ES]]) -> None:
        self.entity = entity
        self.rules: dict[tuple[S | None, S], Rule[S, ES]] = {}
        for rule in rules:
            key = (rule.source, rule.target)
            if key in self.rules:
                raise ValueError(f"{entity} workflow names {rule.source} → {rule.target} twice")
            self.rules[key] = rule

    def rule(self, source: S | None, target: S) -> Rule[S, ES] | None:
        return self.rules.get((source, target))

    def roles_for_target(self, target: S) -> frozenset[str]:
        """Every role that may move some aggregate into `target` (a 403 before state is read)."""
        return frozenset().union(*(r.roles for r in self.rules.values() if r.target == target))

    def targets(self) -> list[S]:
        return sorted({rule.target for rule in self.rules.values()})

    def decide_creation(self, target: S, *, roles: frozenset[str]) -> Decision[S, ES]:
        """Check the creation edge into `target` for `roles`."""
        rule = self.rules.get((None, target))
        if rule is None:
            raise NotAllowedFromState(f"a {self.entity} cannot be created as {target}")
        if not rule.roles & roles:
            raise Forbidden(f"creating a {self.entity} needs one of {sorted(rule.roles)}; "
                            f"caller has {sorted(roles)}")
        return Decision(rule, rule.acting_role(roles))

    def decide(
        self,
        entity: ES,
        target: S,
        *,
        roles: frozenset[str],
        expected_version: int | None,
        reason: str = "",
        evidence: Mapping[str, Any] | None = None,
        approved: bool = False,
    ) -> Decision[S, ES]:
        """Check one requested transition against the table; raise the first refusal that applies.

        The order is what a caller can act on: who they are, then whether they read the current
        version, then whether the edge exists, its roles, its reason, its guards and its
        evidence. A valid request of an edge that needs a second person comes back with the
        decision's `approval` set (nothing is applied yet), unless it is being `approved` now.
        `expected_version` None skips the stale check (the caller did not say).
        """
        if not roles & self.roles_for_target(target):
            raise Forbidden(f"no role of {sorted(roles)} may move a {self.entity} to {target}")
        if expected_version is not None and expected_version != entity.version:
            raise StaleVersion(
                f"{self.entity} is at version {entity.version}, not {expected_version}"
            )
        rule = self.rules.get((entity.status, target))
        if rule is None:
            raise NotAllowedFromState(f"cannot go from {entity.status} to {target}")
        if not rule.roles & roles:
            raise Forbidden(f"{entity.status} → {target} needs one of {sorted(rule.roles)}; "
                            f"caller has {sorted(roles)}")
        if rule.reason_required and not reason.strip():
            raise InvalidInput([f"a reason is required for {entity.status} → {target}"])
        for guard in rule.guards:
            refusal = guard.check(entity)
            if refusal is not None:
                raise guard.refusal(refusal)
        given = evidence or {}
        takes = rule.evidence.fields if rule.evidence else frozenset()
        if unknown := sorted(set(given) - takes):
            shape = (f"it takes {rule.evidence.name} evidence {rule.evidence.shape}"
                     if rule.evidence else "it takes no evidence")
            raise InvalidInput([f"evidence.{key} is unknown for {entity.status} → {target}: "
                                f"{shape}" for key in unknown])
        stored = rule.evidence.check(entity, given, roles) if rule.evidence else {}
        approval = None if approved else rule.needs_approval(entity, stored)
        return Decision(rule, rule.acting_role(roles), stored, approval)
