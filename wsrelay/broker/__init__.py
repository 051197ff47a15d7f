"""Brokers: where ids, history and cross-process delivery live."""

from __future__ import annotations

from typing import Any

from .base import Broker, BrokerUnavailable, History, Publishing
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerUnavailable", "History", "MemoryBroker", "Publishing",
           "broker_from_config"]


def broker_from_config(config: dict[str, Any]) -> Broker:
    """The broker named by ``WSRELAY_BROKER_URL``."""
    url = config["WSRELAY_BROKER_URL"]
    options = {
        "history_size": config["WSRELAY_HISTORY_SIZE"],
        "history_ttl": config["WSRELAY_HISTORY_TTL"],
    }
    if url.startswith("memory:"):
        return MemoryBroker(**options, history_memory=config["WSRELAY_HISTORY_MEMORY"])
    from .redis import ClusterBroker, RedisBroker

    redis = {"prefix": config["WSRELAY_REDIS_PREFIX"],
             "send_delay": config["WSRELAY_REDIS_SEND_DELAY"]}
    if url.split(":", 1)[0] in ("redis+cluster", "rediss+cluster"):
        return ClusterBroker(url, **redis, **options)
    return RedisBroker(url, **redis, **options)
