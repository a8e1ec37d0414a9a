"""Spine's shared plumbing: contracts, messaging, persistence, auth and telemetry used by every service."""
