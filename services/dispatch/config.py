"""Settings of the dispatch service."""

from typing import ClassVar

from pydantic import Field, field_validator

from shared.config import ServiceSettings
from shared.contracts.ext import SYSTEM_NAME
from shared.domain import ROLES

# A plant system may act in any role a person of the plant holds, except `ops` (it operates
# the dead-letter queues and changes no dispatch).
SYSTEM_ROLE_CHOICES = tuple(r for r in ROLES if r != "ops")


class Settings(ServiceSettings):
    service: ClassVar[str] = "dispatch"

    escalation_interval_s: float = Field(
        default=5.0, gt=0, le=3600,
        description="how often the escalation timer looks for overdue exceptions "
                    "(SPINE_ESCALATION_INTERVAL_S)")
    system_roles: str = Field(
        default="",
        description="the role each outside system's dispatch.progress is applied with, e.g. "
                    "'wms=warehouse,tms=shipping' (SPINE_SYSTEM_ROLES); a system not named "
                    "may move nothing")

    @field_validator("system_roles")
    @classmethod
    def _roles_of_systems(cls, value: str) -> str:
        parse_system_roles(value)
        return value

    def roles_of_systems(self) -> dict[str, str]:
        return parse_system_roles(self.system_roles)


def parse_system_roles(value: str) -> dict[str, str]:
    """`wms=warehouse,tms=shipping` → {system: role}; a ValueError naming the bad entry."""
    found: dict[str, str] = {}
    for entry in (e.strip() for e in value.split(",") if e.strip()):
        system, sep, role = (part.strip() for part in entry.partition("="))
        if not sep or not SYSTEM_NAME.match(system):
            raise ValueError(f"SPINE_SYSTEM_ROLES: {entry!r} is not system=role "
                             "(e.g. wms=warehouse)")
        if role not in SYSTEM_ROLE_CHOICES:
            raise ValueError(f"SPINE_SYSTEM_ROLES: {entry!r}: role {role!r} is not one of "
                             f"{list(SYSTEM_ROLE_CHOICES)}")
        if system in found:
            raise ValueError(f"SPINE_SYSTEM_ROLES names {system} twice")
        found[system] = role
    return found
