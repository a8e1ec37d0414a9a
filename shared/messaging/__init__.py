"""Messaging plumbing: topology, broker factory, delivery policy, outbox relay, dead letters."""
