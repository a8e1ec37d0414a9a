"""Wire contracts (v1): the envelope and every event payload, one module per producer."""

from shared.contracts.envelope import Actor, Envelope, LooseEnvelope, new_envelope

__all__ = ["Actor", "Envelope", "LooseEnvelope", "new_envelope"]
