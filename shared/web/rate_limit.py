"""Per-principal rate limits on the routes that take in work: over the limit → 429, nothing written.

A route opts in by wrapping the dependency that gives its caller (`within_rate(require_roles(…))`);
the limits are the app's (`use_rate_limiter`), keyed by the token's `sub`. An app with no limiter,
or a principal whose rate is off, is never refused.
"""

# No `from __future__ import annotations`: FastAPI reads `check`'s annotations at run time, and
# they name the closure's own `dependency`, which a string annotation could not resolve.
import math
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from prometheus_client import Counter

from shared.auth import Principal
from shared.ratelimit import RateLimiter

HTTP_RATE_LIMITED = Counter(
    "spine_http_rate_limited_total",
    "Requests refused with 429 because their principal was over its rate in this process",
    ["route", "principal"],
)


def use_rate_limiter(app: FastAPI, limiter: RateLimiter) -> None:
    """Hold the principals of `app`'s rate-limited routes to `limiter`'s rates."""
    app.state.rate_limiter = limiter


def within_rate(dependency: Any) -> Any:
    """A dependency giving the principal `dependency` gives, once it is within its rate."""

    async def check(request: Request,
                    principal: Annotated[Principal, Depends(dependency)]) -> Principal:
        limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
        wait = limiter.take(principal.sub) if limiter is not None else 0.0
        if not wait or limiter is None:
            return principal
        route = getattr(request.scope.get("route"), "path", request.url.path)
        HTTP_RATE_LIMITED.labels(route, principal.sub).inc()
        seconds = max(1, math.ceil(wait))
        raise HTTPException(
            429, f"rate limit exceeded: {principal.sub} is over its limit of "
            f"{limiter.rate_of(principal.sub)}: send again in {seconds} s",
            headers={"Retry-After": str(seconds)})

    return check
