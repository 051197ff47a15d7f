"""The distributed broker: many workers and hosts share channels through Redis."""

from .broker import RedisBroker, redact

__all__ = ["RedisBroker", "redact"]
