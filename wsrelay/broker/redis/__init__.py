"""The distributed broker: many workers and hosts share channels through Redis.

:mod:`.broker` holds the commands (:class:`RedisBroker`), :mod:`.listener` the
pub/sub connection that carries messages to the hub, :mod:`.codec` how a
message is encoded in Redis, and ``scripts/`` the Lua scripts that decide ids
and history inside Redis.
"""

from .broker import RedisBroker, redact
from .cluster import ClusterBroker

__all__ = ["ClusterBroker", "RedisBroker", "redact"]
