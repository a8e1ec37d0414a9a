"""The test-only crash points: named, refused when unknown, disarmed unless set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from services.order.config import Settings
from shared import crashpoints


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    yield
    crashpoints.arm(())


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, jwt_secret="s" * 40, **values)


def test_a_service_is_disarmed_unless_spine_crash_at_is_set() -> None:
    assert settings().crash_points == ()
    crashpoints.arm(settings().crash_points)
    assert crashpoints.armed() == {}
    crashpoints.reached("after-commit-before-ack")  # a no-op


def test_the_setting_names_points_separated_by_commas() -> None:
    chosen = settings(crash_at=" after-commit-before-ack, after-publish-before-mark ")
    assert chosen.crash_points == ("after-publish-before-mark", "after-commit-before-ack")


def test_an_unknown_point_refuses_the_start_and_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError) as caught:
        settings(crash_at="after-commit-before-ack,after-lunch")
    reason = str(caught.value)
    assert "SPINE_CRASH_AT names no crash point: after-lunch" in reason
    assert all(point in reason for point in crashpoints.POINTS)


def test_a_point_armed_for_the_third_pass_counts_the_first_two() -> None:
    crashpoints.arm(("after-commit-before-ack",), after=3)
    crashpoints.reached("after-commit-before-ack")
    crashpoints.reached("after-commit-before-ack")
    crashpoints.reached("after-publish-before-mark")  # not armed: not counted
    assert crashpoints.armed() == {"after-commit-before-ack": 1}


def test_crash_after_must_be_a_positive_pass() -> None:
    with pytest.raises(ValidationError):
        settings(crash_after=0)
    with pytest.raises(ValueError, match="SPINE_CRASH_AFTER"):
        crashpoints.arm(("after-commit-before-ack",), after=0)
