"""Named crash points: a test-only setting that makes a service SIGKILL itself at a chosen instant.

The e2e tests use them to prove that a crash at the worst moment still leaves exactly one
effect once the service is restarted. **Never set them in production.** A service is armed at
start by two settings, read once in `Runtime.build` (never per message):

- `SPINE_CRASH_AT=<point>[,<point>]` — the points at which to die;
- `SPINE_CRASH_AFTER=N` (default 1) — die at the N-th pass of an armed point (counted per point).

An unknown point name refuses the start with a clear error. Unset, a call site costs one
function call and one falsy check. The points, and where each is reached:

`after-commit-before-publish`
    `shared/uow.py`: a unit of work (a consumed message's or an HTTP request's) has committed
    its effect, audit rows and outbox rows; the relay has published none of them, the HTTP
    caller has no answer and a consumed message is not acked yet. After restart the relay must
    publish the committed rows, and a redelivered message must find its inbox row.
`after-publish-before-mark`
    `shared/messaging/relay.py`: the broker has answered (confirmed) the publishes of a claimed
    batch of outbox rows, which are not marked sent yet. After restart the relay publishes them
    again, and every consumer's inbox must make the second copy a no-op.
`after-commit-before-ack`
    `shared/messaging/delivery.py`: a consumer's handler returned (its unit of work committed,
    or it found the message in its inbox already) and the delivery is not acked yet. After
    restart the broker redelivers it, and the inbox must make the redelivery a no-op.
`after-outbound-before-record`
    After an outbound call to a third party (mail, webhook, ERP) and before the call is
    recorded. No service makes such calls yet (issues 9 and 10 add notification channels and
    ERP pushes); each outbound adapter must call `reached("after-outbound-before-record")`
    right after the call returns, and get a test proving the third party sees its idempotency
    key (the event id) again rather than a second, different request.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterable
from typing import Literal, get_args

log = logging.getLogger("spine.crashpoints")

CrashPoint = Literal[
    "after-commit-before-publish",
    "after-publish-before-mark",
    "after-commit-before-ack",
    "after-outbound-before-record",
]
POINTS: tuple[CrashPoint, ...] = get_args(CrashPoint)

# Armed point → passes still to go before the kill. Empty (the default) means disarmed.
_armed: dict[str, int] = {}


def parse(spec: str | None) -> tuple[CrashPoint, ...]:
    """The points a `SPINE_CRASH_AT` value names; ValueError for a name that is no point."""
    names = [name.strip() for name in (spec or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in POINTS]
    if unknown:
        raise ValueError(f"SPINE_CRASH_AT names no crash point: {', '.join(unknown)} "
                         f"(the points are {', '.join(POINTS)})")
    return tuple(name for name in POINTS if name in names)


def arm(points: Iterable[CrashPoint], after: int = 1) -> None:
    """Die at the `after`-th pass of each of `points` (replaces any earlier arming)."""
    if after < 1:
        raise ValueError(f"SPINE_CRASH_AFTER must be 1 or more, not {after}")
    _armed.clear()
    _armed.update(dict.fromkeys(points, after))
    if _armed:
        log.warning("TEST ONLY: armed to SIGKILL this process at %s (pass %d)",
                    ", ".join(_armed), after)


def armed() -> dict[str, int]:
    """Armed point → passes still to go before the kill (empty when disarmed)."""
    return dict(_armed)


def reached(point: CrashPoint) -> None:
    """Call site of a crash point: SIGKILLs this process when it is armed and due."""
    if _armed and point in _armed:
        _count(point)


def _count(point: CrashPoint) -> None:
    _armed[point] -= 1
    if _armed[point] > 0:
        return
    log.warning("crash point %s reached: SIGKILL", point)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
