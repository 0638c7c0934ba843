"""The networking client: weight codec, transport and sessions (see docs/protocol.md)."""

from .codec import deserialize_weights, serialize_weights

__all__ = ["deserialize_weights", "serialize_weights"]
