"""Reconciliation: what Spine shipped against what the ERP acknowledged, field by field. No I/O.

Spine's side is the dispatch replica (each shipped dispatch, corrections applied). The ERP's
side is, per dispatch, the newest confirmation it acknowledged — the values it booked — with
any field its acknowledgement echoes back taking precedence (the ERP's own word). Findings:

- `missing_in_erp`: shipped in Spine, never acknowledged (with the newest confirmation's
  status: shadowed, awaiting_approval, pending, posted, failed — or none at all);
- `missing_in_spine`: the ERP acknowledged something Spine has no shipment for (an
  acknowledgement naming no confirmation, or a dispatch the replica does not know);
- `differs`: both sides have it, and these fields differ (a correction not acknowledged yet,
  or an ERP that booked something else).

Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

COMPARED = ("order_id", "carrier", "tracking_number")
LINE_FIELDS = ("shipped_quantity", "backorder_quantity")


@dataclass(frozen=True)
class Difference:
    field: str
    spine: Any
    erp: Any


@dataclass(frozen=True)
class Finding:
    finding: str  # missing_in_erp, missing_in_spine, differs
    dispatch_id: str | None
    order_id: str | None
    confirmation_status: str | None = None
    idempotency_key: str | None = None
    differences: tuple[Difference, ...] = ()
    detail: str = ""


@dataclass
class Report:
    shipped: int = 0
    acknowledged: int = 0
    in_agreement: int = 0
    findings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Acknowledged:
    """The newest confirmation of a dispatch the ERP acknowledged, and its answer."""

    idempotency_key: str
    document: dict[str, Any]
    answer: dict[str, Any] | None

    def values(self) -> dict[str, Any]:
        """What the ERP holds: what it was sent, overridden by what its answer says it booked."""
        held = _flatten(self.document)
        answer = self.answer or {}
        body = answer.get("body")
        echoed: dict[str, Any] = body if isinstance(body, dict) else answer
        held.update({k: v for k, v in _flatten(echoed).items() if k in held})
        return held


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    flat = {name: doc[name] for name in COMPARED if name in doc}
    for line in doc.get("lines") or []:
        if isinstance(line, dict) and "line_no" in line:
            for name in LINE_FIELDS:
                if name in line:
                    flat[f"lines[{line['line_no']}].{name}"] = line[name]
    return flat


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    try:
        return Decimal(str(a)) == Decimal(str(b))
    except (InvalidOperation, ValueError):
        return False


def compare(spine: dict[str, Any], erp: dict[str, Any]) -> list[Difference]:
    """Field by field; a field one side lacks is a difference with None on that side."""
    names = sorted(set(spine) | set(erp))
    return [Difference(n, spine.get(n), erp.get(n)) for n in names
            if not _same(spine.get(n), erp.get(n))]


def reconcile(shipped: dict[str, dict[str, Any]], acknowledged: dict[str, Acknowledged],
              latest_status: dict[str, str], unmatched: list[dict[str, Any]]) -> Report:
    """`shipped`: dispatch id → Spine's values (a confirmation document's shape);
    `acknowledged`: dispatch id → the newest acknowledged confirmation; `latest_status`:
    dispatch id → its newest confirmation's status; `unmatched`: acknowledgements that named
    no confirmation ({idempotency_key, detail})."""
    report = Report(shipped=len(shipped), acknowledged=len(acknowledged))
    for dispatch_id in sorted(shipped):
        spine = shipped[dispatch_id]
        ack = acknowledged.get(dispatch_id)
        if ack is None:
            status = latest_status.get(dispatch_id)
            report.findings.append(Finding(
                "missing_in_erp", dispatch_id, spine.get("order_id"), status,
                detail="never acknowledged by the ERP" + (
                    f"; the newest confirmation is {status}" if status else
                    "; no confirmation was recorded")))
            continue
        differences = compare(_flatten(spine), ack.values())
        if differences:
            report.findings.append(Finding(
                "differs", dispatch_id, spine.get("order_id"), latest_status.get(dispatch_id),
                ack.idempotency_key, tuple(differences),
                detail=f"the ERP acknowledged {ack.idempotency_key}; Spine holds newer or "
                       "other values"))
        else:
            report.in_agreement += 1
    for dispatch_id in sorted(set(acknowledged) - set(shipped)):
        ack = acknowledged[dispatch_id]
        report.findings.append(Finding(
            "missing_in_spine", dispatch_id, ack.document.get("order_id"), "acknowledged",
            ack.idempotency_key, detail="acknowledged by the ERP, unknown to Spine's replica"))
    for stray in unmatched:
        report.findings.append(Finding(
            "missing_in_spine", None, None, None, stray.get("idempotency_key"),
            detail=str(stray.get("detail") or "an acknowledgement naming no confirmation")))
    return report
