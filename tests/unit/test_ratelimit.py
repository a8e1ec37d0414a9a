"""Token buckets per sender, on a clock the test moves, and the settings that write them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.order.config import Settings
from shared.ratelimit import Rate, RateLimiter, parse_rates

SECRET = "s" * 40


class Clock:
    """Monotonic seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(text: str, clock: Clock, **kwargs: int) -> RateLimiter:
    return RateLimiter(parse_rates(text, setting="TEST"), clock=clock, **kwargs)


def admitted(limits: RateLimiter, key: str, times: int) -> int:
    return sum(1 for _ in range(times) if limits.take(key) == 0.0)


def test_a_burst_is_admitted_up_to_its_size_and_the_rest_told_when_to_come_back() -> None:
    clock = Clock()
    limits = limiter("mes=2/s:5", clock)

    assert admitted(limits, "mes", 5) == 5
    assert limits.take("mes") == pytest.approx(0.5)  # one token comes back every 0.5 s
    assert limits.take("mes") == pytest.approx(0.5)  # a refusal takes nothing


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    limits = limiter("mes=2/s:5", clock)
    assert admitted(limits, "mes", 5) == 5

    clock.now += 1.0  # two tokens back
    assert admitted(limits, "mes", 5) == 2
    clock.now += 0.25  # half a token: not enough
    assert limits.take("mes") == pytest.approx(0.25)
    clock.now += 3600  # an idle hour refills to the burst, not to 7200
    assert admitted(limits, "mes", 10) == 5


def test_the_burst_defaults_to_one_seconds_worth_and_per_minute_rates_are_spread() -> None:
    clock = Clock()
    limits = limiter("mes=3/s,erp=6/min", clock)

    assert admitted(limits, "mes", 10) == 3
    assert admitted(limits, "erp", 10) == 1
    assert limits.take("erp") == pytest.approx(10.0)
    clock.now += 10
    assert admitted(limits, "erp", 10) == 1


def test_each_key_has_its_own_bucket_even_under_the_shared_default() -> None:
    clock = Clock()
    limits = limiter("default=1/s:2,mes=1/s:3", clock)

    assert admitted(limits, "mes", 10) == 3
    assert admitted(limits, "webshop", 10) == 2
    assert admitted(limits, "chaos", 10) == 2  # webshop's use took none of chaos's
    assert limits.rate_of("webshop") == limits.rate_of("chaos") == Rate(1.0, 2, "1/s (burst 2)")


def test_off_or_zero_is_unlimited_and_so_is_every_name_without_a_default() -> None:
    clock = Clock()
    limits = limiter("default=1/s,erp=off,mes=0,plc=0/s", clock)
    assert all(admitted(limits, key, 1000) == 1000 for key in ("erp", "mes", "plc"))
    assert admitted(limits, "webshop", 1000) == 1

    only_mes = limiter("mes=1/s", clock)
    assert admitted(only_mes, "webshop", 1000) == 1000
    assert only_mes.limits_anything
    assert not limiter("", clock).limits_anything
    assert not limiter("default=off,mes=0", clock).limits_anything


def test_past_max_keys_refilled_buckets_are_forgotten_and_busy_ones_kept() -> None:
    clock = Clock()
    limits = limiter("default=1/s:1", clock, max_keys=3)
    for key in ("a", "b", "c"):
        assert limits.take(key) == 0.0
    clock.now += 2  # a, b, c are full again, so nothing is lost by forgetting them ...
    assert limits.take("a") == 0.0  # ... but a is busy again now
    assert limits.take("d") == 0.0  # a fourth key: b and c are forgotten to make room

    assert limits.take("a") > 0  # a's empty bucket was kept
    assert limits.take("d") > 0
    assert limits.take("b") == 0.0


@pytest.mark.parametrize(("text", "wanted"), [
    ("", {}),
    (" default=50/s , mes=200/s:400 ", {"default": Rate(50.0, 50, "50/s"),
                                        "mes": Rate(200.0, 400, "200/s (burst 400)")}),
    ("mes=off,erp=0,plc=2.5/s", {"mes": None, "erp": None, "plc": Rate(2.5, 3, "2.5/s")}),
    ("u-7=30/min:2", {"u-7": Rate(0.5, 2, "30/min (burst 2)")}),
])
def test_rates_are_read_as_written(text: str, wanted: dict[str, Rate | None]) -> None:
    assert parse_rates(text, setting="TEST") == wanted


@pytest.mark.parametrize(("text", "named"), [
    ("mes=fast", "'mes=fast' is not"),
    ("mes=200", "'mes=200' is not"),
    ("mes=200/h", "'mes=200/h' is not"),
    ("mes=-1/s", "'mes=-1/s' is not"),
    ("default=5/s,mes", "'mes' is not"),
    ("mes=5/s:0", "'mes=5/s:0' has a burst of 0"),
    ("mes=5/s,mes=6/s", "'mes' is given twice"),
])
def test_a_bad_entry_is_refused_by_name(text: str, named: str) -> None:
    with pytest.raises(ValueError, match="TEST: ") as caught:
        parse_rates(text, setting="TEST")
    assert named in str(caught.value)


def test_a_bad_limit_refuses_the_order_service_start_naming_setting_and_entry() -> None:
    for field, setting in (("intake_rate_limits", "SPINE_INTAKE_RATE_LIMITS"),
                           ("http_rate_limits", "SPINE_HTTP_RATE_LIMITS")):
        with pytest.raises(ValidationError) as caught:
            Settings(_env_file=None, jwt_secret=SECRET, **{field: "default=5/s,mes=lots"})  # type: ignore[call-arg, arg-type]
        assert f"{setting}: 'mes=lots' is not" in str(caught.value)


def test_by_default_nothing_is_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPINE_INTAKE_RATE_LIMITS", raising=False)
    monkeypatch.delenv("SPINE_HTTP_RATE_LIMITS", raising=False)
    settings = Settings(_env_file=None, jwt_secret=SECRET)  # type: ignore[call-arg]
    assert not RateLimiter(settings.intake_limits).limits_anything
    assert not RateLimiter(settings.http_limits).limits_anything
