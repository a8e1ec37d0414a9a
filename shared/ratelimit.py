"""Token buckets: how fast one sender (an outside system, a principal) may ask for work.

Each key has a bucket of `burst` tokens that refills at `per_second`; a request takes one
token or is refused with the seconds until one is back. A bucket is two floats and `take` does
arithmetic only, with no await in it, so asyncio needs no lock and a refusal costs nothing.

The limits are written `name=rate[:burst]`, comma-separated, where rate is `N/s` or `N/min`
and burst (default: one second's worth, at least 1) is how many may come at once; `0` or
`off` means unlimited, and `default` is the rate of every name not listed:
`default=50/s,mes=200/s:400,erp=off`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT = "default"

_ENTRY = re.compile(r"^(?P<name>[^\s=,:]+)=(?:(?P<off>off|0)|"
                    r"(?P<count>\d+(?:\.\d+)?)/(?P<unit>s|min)(?::(?P<burst>\d+))?)$")
_SYNTAX = "name=N/s or name=N/min, optionally :burst (e.g. mes=200/s:400), or name=off"


@dataclass(frozen=True)
class Rate:
    """`per_second` on average, up to `burst` at once; `text` is how it was written."""

    per_second: float
    burst: int
    text: str

    def __str__(self) -> str:
        return self.text


# Name → its rate, None where unlimited; the `default` entry covers every name not listed.
Rates = Mapping[str, Rate | None]


def parse_rates(text: str, *, setting: str) -> dict[str, Rate | None]:
    """The limits `text` writes; ValueError naming `setting` and the bad entry otherwise."""
    rates: dict[str, Rate | None] = {}
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        found = _ENTRY.match(entry)
        if found is None:
            raise ValueError(f"{setting}: {entry!r} is not {_SYNTAX}")
        name = found["name"]
        if name in rates:
            raise ValueError(f"{setting}: {name!r} is given twice")
        rates[name] = None if found["off"] else _rate(found, entry, setting)
    return rates


def _rate(found: re.Match[str], entry: str, setting: str) -> Rate | None:
    count = float(found["count"])
    if count == 0:
        return None
    per_second = count if found["unit"] == "s" else count / 60
    burst = int(found["burst"]) if found["burst"] else max(1, math.ceil(per_second))
    if burst < 1:
        raise ValueError(f"{setting}: {entry!r} has a burst of 0; nothing could ever pass")
    text = f"{found['count']}/{found['unit']}" + (f" (burst {burst})" if found["burst"] else "")
    return Rate(per_second, burst, text)


class RateLimiter:
    """One token bucket per key, created on first use; see the module's docstring.

    `clock` is monotonic seconds (injectable for tests). At most `max_keys` buckets are kept:
    past that, buckets that have refilled are forgotten (a full bucket and no bucket are the
    same thing), so made-up keys cannot grow the process without bound.
    """

    def __init__(self, rates: Rates, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000) -> None:
        self.rates = dict(rates)
        self.default = self.rates.pop(DEFAULT, None)
        self.clock = clock
        self.max_keys = max_keys
        # key → [tokens, when they were counted]
        self._buckets: dict[str, list[float]] = {}

    @property
    def limits_anything(self) -> bool:
        """Whether any key is limited at all (an unlimited limiter need not be asked)."""
        return self.default is not None or any(self.rates.values())

    def rate_of(self, key: str) -> Rate | None:
        """The rate `key` is held to; None when unlimited."""
        return self.rates.get(key, self.default)

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 when it had one, else the seconds until it will."""
        rate = self.rates.get(key, self.default)
        if rate is None:
            return 0.0
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = [float(rate.burst), now]
        else:
            bucket[0] = min(float(rate.burst), bucket[0] + (now - bucket[1]) * rate.per_second)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate.per_second

    def _forget_full(self, now: float) -> None:
        for key, (tokens, at) in list(self._buckets.items()):
            rate = self.rate_of(key)
            if rate is None or tokens + (now - at) * rate.per_second >= rate.burst:
                del self._buckets[key]
        if len(self._buckets) >= self.max_keys:
            # Every kept bucket is in use: starting over lets each key burst once more, which
            # is better than refusing keys the limiter has never seen.
            self._buckets.clear()
