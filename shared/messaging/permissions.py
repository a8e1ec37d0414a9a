"""Who may say what on the broker, derived from the registry: users, permissions, topic rights.

One user per service and per outside system. Each may publish on the events exchange only the
routing keys of its own prefix (topic permissions), and read only its own queues; none may
configure anything, since `spine topology declare` (as the ops user) declares the topology.
The same table gives the consumers' check (`shared.messaging.provenance`). Standard library
only, so the CLI can import it without FastStream.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from shared import registry

# In SPINE_BROKER_USERS, the principal of a user every Spine producer shares (development's
# `guest`, the ops user that replays dead letters): it may carry any Spine or outside key, so
# for it only the envelope's `producer` and its being a known user are checked.
ANY = "*"
OPS_USER = "spine-ops"
RABBIT_VERSION = "3.10.8"
NOTHING = "^$"


def owner_of(routing_key: str) -> str | None:
    """The producer a routing key belongs to (`order.x` → order, `ext.mes.x` → mes), or None."""
    head, _, rest = routing_key.partition(".")
    if head == registry.EXTERNAL_PREFIX:
        system, dot, _ = rest.partition(".")
        return system if system and dot else None
    service = registry.BY_PREFIX.get(head)
    return service.name if service is not None and rest else None


def prefixes_of(principal: str) -> tuple[str, ...]:
    """The routing-key prefixes a principal (a service, an outside system or `*`) may publish."""
    if principal == ANY:
        return (*(f"{s.event_prefix}." for s in registry.SERVICES), f"{registry.EXTERNAL_PREFIX}.")
    if principal in registry.BY_NAME:
        return (f"{registry.BY_NAME[principal].event_prefix}.",)
    return (f"{registry.EXTERNAL_PREFIX}.{principal}.",)


def broker_user(amqp_url: str) -> str:
    """The user a connection to `amqp_url` logs in as (AMQP's default `guest` when it names none)."""
    username = urlsplit(amqp_url).username
    return unquote(username) if username else "guest"


def password_hash(user: str, password: str) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256` of a password, salted from the user's name.

    A fixed salt keeps a generated definitions file stable; it is for development passwords,
    which are public anyway. Real ones are set with `spine broker apply`.
    """
    salt = hashlib.sha256(f"spine:{user}".encode()).digest()[:4]
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def broker_users(systems: Iterable[str] = (), *, user_prefix: str = "") -> dict[str, str]:
    """Broker user → principal for the services and `systems` (what SPINE_BROKER_USERS holds)."""
    users = {f"{user_prefix}{s.name}": s.name for s in registry.SERVICES}
    for system in systems:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*", system) or system in registry.BY_NAME:
            raise ValueError(f"{system!r} is not a valid outside system name")
        users[f"{user_prefix}{system}"] = system
    users[f"{user_prefix}{OPS_USER}"] = ANY
    return users


def definitions(
    *,
    vhost: str = "/",
    namespace: str = "spine",
    systems: Iterable[str] = (),
    user_prefix: str = "",
    passwords: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A RabbitMQ definitions document: the vhost, every user, their rights, the exchanges.

    `passwords` (user → password) default to `<user>-dev`, development's.
    """
    ns = re.escape(namespace)
    # `<namespace>.unrouted` (the events exchange's alternate exchange and its kept queue) is
    # spine-ops's alone to read and purge; publishers reach it only through `events`.
    unrouted = f"{namespace}.unrouted"
    exchanges = f"{ns}\\.(events|dlx)"
    users, permissions, topic_permissions = [], [], []
    for user, principal in broker_users(systems, user_prefix=user_prefix).items():
        password = (passwords or {}).get(user, f"{user}-dev")
        ops = principal == ANY
        users.append({"name": user, "password_hash": password_hash(user, password),
                      "hashing_algorithm": "rabbit_password_hashing_sha256",
                      "tags": ["administrator"] if ops else []})
        if ops:
            permissions.append({"user": user, "vhost": vhost,
                                "configure": ".*", "write": ".*", "read": ".*"})
            continue
        if principal in registry.BY_NAME:
            # Its own queues (to consume), both exchanges (to bind and to dead-letter); the
            # queue names are `<namespace>.<service>.<purpose>[.dlq]`.
            own = f"^({exchanges}|{ns}\\.{re.escape(principal)}\\..+)$"
            permissions.append({"user": user, "vhost": vhost,
                                "configure": NOTHING, "write": own, "read": own})
            # Read: bindings name other services' keys (dispatch binds order.confirmed).
            read = ".*"
        else:
            permissions.append({"user": user, "vhost": vhost, "configure": NOTHING,
                                "write": f"^{ns}\\.events$", "read": NOTHING})
            read = NOTHING
        [prefix] = prefixes_of(principal)
        topic_permissions.append({"user": user, "vhost": vhost, "exchange": f"{namespace}.events",
                                  "write": "^" + re.escape(prefix), "read": read})
    return {
        "rabbit_version": RABBIT_VERSION,
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        # What `spine topology declare` declares with the same arguments (a definition that
        # differed would make its declare fail): the consumer queues are left to it.
        "exchanges": [
            {"name": f"{namespace}.events", "vhost": vhost, "type": "topic", "durable": True,
             "auto_delete": False, "internal": False,
             "arguments": {"alternate-exchange": unrouted}},
            {"name": f"{namespace}.dlx", "vhost": vhost, "type": "direct", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
            {"name": unrouted, "vhost": vhost, "type": "fanout", "durable": True,
             "auto_delete": False, "internal": False, "arguments": {}},
        ],
        "queues": [
            {"name": unrouted, "vhost": vhost, "durable": True, "auto_delete": False,
             "arguments": {"x-queue-type": "quorum"}},
        ],
        "bindings": [
            {"source": unrouted, "vhost": vhost, "destination": unrouted,
             "destination_type": "queue", "routing_key": "", "arguments": {}},
        ],
        "parameters": [],
        "policies": [],
        "global_parameters": [],
    }
