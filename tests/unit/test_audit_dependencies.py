"""`make lint`'s reading of pip-audit's report: never a silent pass."""

from __future__ import annotations

from typing import Any

from scripts.audit_dependencies import verdict

CLEAN = {"name": "httpx", "version": "0.28.1", "vulns": []}
VULNERABLE = {"name": "jinja2", "version": "2.4.1", "vulns": [
    {"id": "PYSEC-2014-8", "fix_versions": ["2.7.2"], "aliases": ["CVE-2014-1402"]}]}
UNAUDITED = {"name": "sqlalchemy",
             "skip_reason": "Dependency not found on PyPI and could not be audited: sqlalchemy"}


def report(*deps: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(deps), "fixes": []}


def test_a_known_vulnerability_fails_and_names_the_package_and_the_fix() -> None:
    code, lines = verdict(report(CLEAN, VULNERABLE, UNAUDITED), strict=False)
    assert code == 1
    assert lines[0] == "jinja2 2.4.1: PYSEC-2014-8 (fixed in 2.7.2)"


def test_every_package_audited_and_clean_passes() -> None:
    assert verdict(report(CLEAN), strict=True) == (
        0, ["pip-audit: 1 locked packages audited, no known vulnerabilities"])


def test_a_package_that_could_not_be_audited_warns_and_fails_when_strict() -> None:
    code, lines = verdict(report(CLEAN, UNAUDITED), strict=False)
    assert code == 0 and "WARNING: 1 of 2 locked packages could not be audited" in lines[-1]
    assert verdict(report(CLEAN, UNAUDITED), strict=True)[0] == 1
