"""Who may say what: a consumer refuses a message its broker-validated sender may not publish.

The broker's topic permissions already stop a user publishing outside its prefix; this check is
the second lock, for a broker configured too loosely (development shares `guest`) or a message
that reached a queue by another door (the default exchange). The delivery policy
(`shared.messaging.delivery`) runs it before any handler: a refusal is a `ProvenanceError`,
dead-lettered at once with the reason in `x-spine-error`, and never answered.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.messaging.permissions import ANY, owner_of, prefixes_of

DEVELOPMENT_USERS: Mapping[str, str] = {"guest": ANY}


@dataclass(frozen=True)
class Senders:
    """Broker user → the routing-key prefixes it may publish, from SPINE_BROKER_USERS."""

    prefixes: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, users: Mapping[str, str]) -> Senders:
        """From a map of broker user → principal (a service, an outside system, or `*`)."""
        return cls({user: prefixes_of(principal) for user, principal in users.items()})

    def refusal(self, user_id: str | None, routing_key: str, producer: Any) -> str | None:
        """Why this sender may not publish `routing_key` as `producer`; None when it may."""
        return self.sender_refusal(user_id, routing_key) or producer_refusal(routing_key, producer)

    def sender_refusal(self, user_id: str | None, routing_key: str) -> str | None:
        """Why the broker user `user_id` may not publish `routing_key`; None when it may."""
        if not user_id:
            return (f"provenance: {routing_key} has no user_id, so the broker vouched for no "
                    "sender; Spine's publishers always set it")
        allowed = self.prefixes.get(user_id)
        if allowed is None:
            return f"provenance: user_id {user_id!r} is not a Spine broker user"
        if not routing_key.startswith(allowed):
            return (f"provenance: broker user {user_id!r} may not publish {routing_key} "
                    f"(it may publish {', '.join(p + '*' for p in allowed)})")
        return None


# Development's senders: every service logs in as `guest`.
DEVELOPMENT = Senders.of(DEVELOPMENT_USERS)


def producer_refusal(routing_key: str, producer: Any) -> str | None:
    """Why an envelope naming `producer` may not travel as `routing_key`; None when it may."""
    owner = owner_of(routing_key)
    if owner is None:
        return f"provenance: {routing_key} belongs to no Spine producer"
    # A body without a producer is left to the contract, which requires one.
    if isinstance(producer, str) and producer != owner:
        return (f"provenance: producer {producer!r} may not publish {routing_key} "
                f"(only {owner!r} may)")
    return None
