"""`make lint`'s dependency audit: pip-audit over every package uv.lock pins, with hashes.

pip-audit asks PyPI's advisory data about each pinned version. It reports a package it could
not ask about as skipped and still exits 0 ("No known vulnerabilities found"), so this reads
its JSON report instead: a known vulnerability always fails; a package that could not be
audited (no network, or an index without PyPI's per-version JSON) fails under
SPINE_AUDIT_STRICT=1, as CI with network sets it, and otherwise is one loud warning naming how
many went unaudited. Never a silent pass.
"""

from __future__ import annotations

import json
import os
import subprocess  # nosec B404 # runs uv and pip-audit, fixed arguments, no shell
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
UV = ROOT / ".tools" / "bin" / "uv"
PIP_AUDIT = ROOT / ".venv" / "bin" / "pip-audit"
# Waivers: vulnerability id → why it does not apply here (one line each). None today.
IGNORED: dict[str, str] = {}


def verdict(report: dict[str, Any], *, strict: bool) -> tuple[int, list[str]]:
    """Exit code and the lines to print, from pip-audit's `-f json` report."""
    lines: list[str] = []
    vulnerable = unaudited = 0
    reason = ""
    dependencies = report.get("dependencies", [])
    for dep in dependencies:
        if "skip_reason" in dep:
            unaudited += 1
            reason = reason or dep["skip_reason"]
            continue
        for vuln in dep.get("vulns", []):
            if vuln["id"] in IGNORED:
                continue
            vulnerable += 1
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version yet"
            lines.append(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    audited = len(dependencies) - unaudited
    if vulnerable:
        lines.append(f"pip-audit: {vulnerable} known vulnerabilit{'y' if vulnerable == 1 else 'ies'}"
                     f" in {len(dependencies)} locked packages")
        return 1, lines
    if unaudited:
        lines.append(f"pip-audit: WARNING: {unaudited} of {len(dependencies)} locked packages could "
                     f"not be audited; {audited} audited, none vulnerable. First reason: {reason}")
        return (1 if strict else 0), lines
    lines.append(f"pip-audit: {audited} locked packages audited, no known vulnerabilities")
    return 0, lines


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        subprocess.run(  # nosec B603 # our uv, fixed arguments
            [str(UV), "export", "--frozen", "--all-groups", "--format", "requirements-txt",
             "--no-emit-project", "--quiet", "-o", str(requirements)], cwd=ROOT, check=True)
        ran = subprocess.run(  # nosec B603 # our pip-audit, fixed arguments
            [str(PIP_AUDIT), "-r", str(requirements), "--require-hashes", "--disable-pip",
             "--progress-spinner", "off", "--format", "json"],
            cwd=ROOT, capture_output=True, text=True, check=False)
    try:
        report = json.loads(ran.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(f"pip-audit failed (exit {ran.returncode}):\n{ran.stderr}")
        return 1
    code, lines = verdict(report, strict=os.environ.get("SPINE_AUDIT_STRICT") == "1")
    print("\n".join(lines), file=sys.stderr if code else sys.stdout)
    return code


if __name__ == "__main__":
    sys.exit(main())
