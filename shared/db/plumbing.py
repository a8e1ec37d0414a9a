"""The outbox, inbox and audit tables every service carries, and their migration."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

OUTBOX_CHANNEL = "spine_outbox"


# v2: the inbox keeps each message's body digest, the outbox a queue to send answers to.
LATEST = 2


def plumbing_tables(
    metadata: sa.MetaData, *, version: int = LATEST
) -> tuple[sa.Table, sa.Table, sa.Table]:
    """Add `outbox`, `inbox` and `audit_log`, as plumbing `version` has them, to `metadata`."""
    since_v2 = version >= 2
    outbox = sa.Table(
        "outbox",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
        sa.Column("routing_key", sa.Text, nullable=False),
        sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("headers", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("sent_at", sa.DateTime(timezone=True)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        *([sa.Column("reply_to", sa.Text)] if since_v2 else []),
        sa.Index("ix_outbox_unsent", "id", postgresql_where=sa.text("sent_at IS NULL")),
    )
    inbox = sa.Table(
        "inbox",
        metadata,
        sa.Column("consumer", sa.Text, primary_key=True),
        sa.Column("message_id", sa.Text, primary_key=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        *([sa.Column("body_sha256", sa.LargeBinary)] if since_v2 else []),
    )
    audit_log = sa.Table(
        "audit_log",
        metadata,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("actor_id", sa.Text, nullable=False),
        sa.Column("actor_role", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("entity_type", sa.Text, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("from_state", sa.Text),
        sa.Column("to_state", sa.Text),
        sa.Column("reason", sa.Text),
        sa.Column("correlation_id", UUID(as_uuid=True)),
        sa.Column("causation_id", UUID(as_uuid=True)),
        sa.Column("details", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Index("ix_audit_log_entity", "entity_type", "entity_id", "id"),
        sa.Index("ix_audit_log_correlation_id", "correlation_id"),
    )
    return outbox, inbox, audit_log


_PLUMBING_DDL = [
    # Wake the relay at commit time instead of polling: one NOTIFY per inserting statement.
    f"""
    CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_notify('{OUTBOX_CHANNEL}', ''); RETURN NULL; END $$
    """,
    """
    CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()
    """,
    # The audit log is append-only: the database refuses to change or remove history.
    """
    CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP; END $$
    """,
    """
    CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()
    """,
]

_PLUMBING_DROP = [
    "DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log",
    "DROP FUNCTION IF EXISTS audit_log_append_only()",
    "DROP TRIGGER IF EXISTS outbox_notify ON outbox",
    "DROP FUNCTION IF EXISTS outbox_notify()",
]


def upgrade_plumbing_v1(op: Any) -> None:
    """Create the v1 plumbing tables in a service's first migration (frozen: add v2, never edit)."""
    metadata = sa.MetaData(naming_convention=_naming())
    for table in plumbing_tables(metadata, version=1):
        table.create(op.get_bind())
    for statement in _PLUMBING_DDL:
        op.execute(statement)


def upgrade_plumbing_v2(op: Any) -> None:
    """v1 → v2: the inbox's body digest (null for rows from before), the outbox's `reply_to`."""
    op.add_column("inbox", sa.Column("body_sha256", sa.LargeBinary))
    op.add_column("outbox", sa.Column("reply_to", sa.Text))


def downgrade_plumbing_v2(op: Any) -> None:
    op.drop_column("outbox", "reply_to")
    op.drop_column("inbox", "body_sha256")


def downgrade_plumbing_v1(op: Any) -> None:
    for statement in _PLUMBING_DROP:
        op.execute(statement)
    for name in ("audit_log", "inbox", "outbox"):
        op.drop_table(name)


def _naming() -> dict[str, str]:
    from shared.db.engine import NAMING_CONVENTION

    return dict(NAMING_CONVENTION)
