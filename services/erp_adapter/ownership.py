"""The field-ownership registry: which system owns each field of each entity. No I/O.

The registry is a versioned data file (`ownership.json`), read at start; a registry that names a
field twice, or gives a field to a Spine owner that is not a service, stops the start with the
entry named. Every inbound ERP record is split against it: what the ERP owns may be applied, a
value for a field Spine owns becomes a conflict (never applied), and a field the registry does
not know is reported, not guessed at.

Line fields are named `lines[].<field>`; a record names one line as `lines[<line_no>].<field>`.
Standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared import workflow

ERP = "erp"
_LINE = re.compile(r"^lines\[(\d+)\]\.(.+)$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\[\]\.[a-z][a-z0-9_]*)?$")


class OwnershipError(workflow.InvalidInput):
    """The registry file cannot be used; the service must not start with it."""


@dataclass(frozen=True)
class FieldOwner:
    """One row of the registry: `entity.field` is owned by `owner` (`erp` or a Spine service)."""

    entity: str
    field: str
    owner: str
    why: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"entity": self.entity, "field": self.field, "owner": self.owner, "why": self.why}


@dataclass(frozen=True)
class OwnershipRegistry:
    version: int
    fields: tuple[FieldOwner, ...]

    def owner_of(self, entity: str, field: str) -> str | None:
        """The owner of `field` of `entity` (`lines[3].quantity` is `lines[].quantity`); None if unnamed."""
        pattern = field_pattern(field)
        return next((f.owner for f in self.fields if f.entity == entity and f.field == pattern),
                    None)

    def entities(self) -> list[str]:
        return sorted({f.entity for f in self.fields})

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "fields": [f.as_dict() for f in self.fields]}

    def as_markdown(self) -> str:
        """The registry as the README's table (generated: `spine erp ownership --markdown`)."""
        lines = [f"Ownership registry version {self.version} "
                 "(`services/erp_adapter/ownership.json`).", "",
                 "| entity | field | owner | why |", "|---|---|---|---|"]
        lines += [f"| {f.entity} | `{f.field}` | {f.owner} | {f.why} |" for f in self.fields]
        return "\n".join(lines) + "\n"

    def check_erp_owns(self, entity: str, fields: Iterable[str]) -> None:
        """Refuse a registry that takes from the ERP a field the import writes as the ERP's."""
        taken = [f"{entity}.{f} (owner: {self.owner_of(entity, f) or 'not named'})"
                 for f in fields if self.owner_of(entity, f) != ERP]
        if taken:
            raise OwnershipError([f"the reference-data import applies {t} as the ERP's; the "
                                  "registry must give it to erp" for t in taken])


def field_pattern(field: str) -> str:
    """`lines[3].quantity` → `lines[].quantity`; other names as they are."""
    found = _LINE.match(field)
    return f"lines[].{found.group(2)}" if found else field


def parse_registry(text: str, *, source: str, services: Iterable[str]) -> OwnershipRegistry:
    """Read and check the registry file; `OwnershipError` names every bad entry."""
    try:
        document = json.loads(text, object_pairs_hook=_no_repeated_keys)
    except ValueError as exc:
        raise OwnershipError([f"{source} is not valid JSON: {exc}"]) from exc
    if not isinstance(document, dict) or not isinstance(document.get("fields"), list):
        raise OwnershipError([f"{source}: expected an object with 'version' and a 'fields' list"])
    version = document.get("version")
    problems: list[str] = []
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.append(f"{source}: 'version' must be a whole number from 1, not {version!r}")
    owners = {ERP, *services}
    seen: dict[tuple[str, str], int] = {}
    fields: list[FieldOwner] = []
    for number, entry in enumerate(document["fields"], start=1):
        where = f"{source} entry {number}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected an object with entity, field, owner")
            continue
        unknown = sorted(set(entry) - {"entity", "field", "owner", "why"})
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)}")
        entity, name, owner = entry.get("entity"), entry.get("field"), entry.get("owner")
        why = entry.get("why", "")
        bad = [k for k, v in (("entity", entity), ("field", name), ("owner", owner))
               if not isinstance(v, str) or not v]
        if bad or not isinstance(why, str):
            problems.append(f"{where}: {', '.join(bad) or 'why'} must be non-empty text")
            continue
        assert isinstance(entity, str) and isinstance(name, str) and isinstance(owner, str)  # nosec B101
        where = f"{source} entry {number} ({entity}.{name})"
        if not _NAME.match(entity) or not _NAME.match(name) or "[" in entity:
            problems.append(f"{where}: names are snake_case, line fields lines[].<field>")
        if owner not in owners:
            problems.append(f"{where}: owner {owner!r} is neither erp nor a Spine service "
                            f"({', '.join(sorted(owners - {ERP}))})")
        key = (entity, name)
        if key in seen:
            problems.append(f"{where}: {entity}.{name} is already named by entry {seen[key]}")
        else:
            seen[key] = number
        fields.append(FieldOwner(entity, name, owner, why))
    if problems:
        raise OwnershipError(problems)
    assert isinstance(version, int)  # nosec B101 # checked above
    return OwnershipRegistry(version, tuple(fields))


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"key(s) {', '.join(repeated)} appear twice in one object")
    return dict(pairs)


# ---------------------------------------------------------------------------- inbound records


@dataclass(frozen=True)
class FieldValue:
    """One field of an inbound record, with who owns it."""

    field: str
    value: Any
    owner: str


@dataclass(frozen=True)
class Checked:
    """An inbound record split by the registry."""

    erp_owned: dict[str, Any]  # may be applied
    spine_owned: list[FieldValue]  # each a conflict
    unknown: list[str]  # named nowhere in the registry: neither applied nor a conflict

    def spine_owned_names(self) -> list[str]:
        return [f.field for f in self.spine_owned]


def check_record(registry: OwnershipRegistry, entity: str,
                 fields: Mapping[str, Any]) -> Checked:
    """Split one inbound record's fields into the ERP's, Spine's and the unknown."""
    erp: dict[str, Any] = {}
    spine: list[FieldValue] = []
    unknown: list[str] = []
    for name, value in fields.items():
        owner = registry.owner_of(entity, name)
        if owner is None:
            unknown.append(name)
        elif owner == ERP:
            erp[name] = value
        else:
            spine.append(FieldValue(name, value, owner))
    return Checked(erp, spine, unknown)
