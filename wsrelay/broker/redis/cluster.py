"""The Redis Cluster broker: channels spread over the shards of a cluster by their slot.

Why it is built this way:

* **A shard is a :class:`RedisBroker` on one master** (:class:`Shard`): its
  auto-pipelined command connection, its listener, its scripts, unchanged but
  for three things. The keys of no channel become keys of the channel's slot
  (:func:`~.slots.slot_key`: the origin), since Cluster refuses a script whose
  keys span slots. The publish script ``SPUBLISH``es: sharded pub/sub stays on
  the slot's shard instead of being broadcast to every node. And the master's
  replication id goes to the script as an argument, not through a key: the
  shard learns it when it connects (the first time before anything is queued),
  and a connection that finds another one (a replica promoted, a master
  restarted) fails every command queued with the old one, so a publish always
  runs with the id of the master it runs on; a channel whose position was
  written under another master (before a failover, or on the node a slot
  migrated from) starts a new epoch: no id is ever handed out twice.
* **The slot map is redis-py's** (``redis.cluster.NodesManager``, fed by
  ``CLUSTER SLOTS``): it is refreshed every few seconds, at once after a shard
  failed or answered ``MOVED``/``ASK``, and every half second while a shard
  is failing. After each refresh every watched channel whose slot has a new
  owner is moved there (:meth:`~.listener.Listener.release`/``adopt``): the
  new owner's listener subscribes and replays from the log what was missed,
  exactly as after a reconnect (a node ending a subscription itself, for a
  slot it gave up, asks for the same; :class:`ShardListener`). A shard whose
  node no longer owns slots is closed.
* **No retries.** A publish refused by a node (``MOVED`` while the map is
  stale, ``TRYAGAIN`` during a migration, a dead master) answers
  :class:`BrokerUnavailable` like any broker fault: the script did not run, so
  the publisher may send again. Only the channels of the failing shard see it.
* **Health per shard**: :meth:`ClusterBroker.status` lists each shard; the
  relay is ``ok`` while every shard that holds watched channels, or was asked
  a command, answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

import gevent
import hiredis
import redis
from gevent.event import Event
from gevent.lock import Semaphore
from redis.cluster import ClusterNode, NodesManager
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from ...ids import MessageId
from ...message import Message
from ..base import Broker, BrokerUnavailable, Control, Deliver, History, Publishing
from .broker import CONTROL_CHANNEL, MAX_PENDING, RedisBroker, redact
from .codec import decode
from .commands import SEND_DELAY
from .listener import Listener, Watch
from .pipeline import Arg
from .slots import SLOTS, channel_slot, slot_key
from .urls import ClusterUrl, parse_cluster_url

log = logging.getLogger(__name__)

#: Seconds between refreshes of the slot map while all is well, and while a shard fails.
REFRESH = 5.0
REFRESH_FAILING = 0.5
#: Errors with which a node that answers refuses a command or subscription of a slot it does not
#: serve now (or while the cluster is down): the map is read again; no fault of the shard's.
REDIRECTED = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")


class ShardListener(Listener):
    """A shard's pub/sub connection: sharded pub/sub, and a channel whose subscription the
    node ended or refused (its slot moved, the cluster is down) goes to ``on_dropped``."""

    sharded = True
    on_dropped: Callable[[str], None] | None = None

    def _handle(self, reply: object) -> None:
        """One reply. Acknowledgements are matched by channel, not by order: Redis also sends
        ``sunsubscribe`` of its own, for a slot it gave up, and a refused ``SSUBSCRIBE``
        (``MOVED``) has no channel in its answer."""
        if isinstance(reply, hiredis.ReplyError):
            if not str(reply).startswith(REDIRECTED):
                raise redis.ConnectionError(f"Redis refused: {reply}")
            slot = int(str(reply).split()[1]) if str(reply).startswith(("MOVED", "ASK")) else -1
            for key, watch in list(self._acks):
                if watch is not None and (slot < 0 or key_slot(key) == slot):
                    self._acks.remove((key, watch))
                    self._dropped(watch)
            return
        if not isinstance(reply, list):
            return
        kind, key = reply[0], reply[1]
        if kind == b"smessage":
            watch = self._by_key.get(key)
            if watch is not None:
                self._hand_over(watch, decode(watch.channel, reply[2]))
            return
        pending = next((ack for ack in self._acks
                        if ack[0] == key and (ack[1] is None) == (kind == b"sunsubscribe")), None)
        if pending is not None:
            self._acks.remove(pending)
            watch = pending[1]
            if watch is not None and self.watches.get(watch.channel) is watch:
                self._subscribed(watch)
        elif kind == b"sunsubscribe" and (watch := self._by_key.get(key)) is not None:
            self._dropped(watch)  # the slot moved away from this node

    def _dropped(self, watch: Watch) -> None:
        watch.subscribed.clear()
        if self.on_dropped is not None and self.watches.get(watch.channel) is watch:
            self.on_dropped(watch.channel)


class Shard(RedisBroker):
    """The channels of the slots one master serves: a :class:`RedisBroker` on that node."""

    listener_class = ShardListener
    _listener: ShardListener

    def __init__(self, url: str, cluster: ClusterBroker, **options: Any) -> None:
        super().__init__(url, **options)
        self._cluster = cluster
        self._listener.on_dropped = cluster.dropped
        #: The replication id of this node's master, as the last connection found it.
        conn = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            self._replid = _replication(conn)[1]
        except (OSError, redis.RedisError) as exc:
            raise BrokerUnavailable(f"the message broker is unavailable ({exc})") from exc
        finally:
            conn.disconnect()

    def start(self, deliver: Deliver) -> None:
        """Deliver to the hub; the pub/sub connection is made once a channel is watched."""
        Broker.start(self, deliver)
        self._listener.deliver = deliver

    @property
    def watching(self) -> bool:
        return bool(self._listener.watches)

    @property
    def ok(self) -> bool:
        return self._commands_ok and (self._listener.connected or not self.watching)

    def probe(self) -> None:
        """Whether a failed shard answers again, when no listener or command would tell."""
        if not self.ok and not self.watching:
            with contextlib.suppress(BrokerUnavailable):
                self._call("PING")

    def status(self) -> dict[str, object]:
        return {**super().status(), "ok": self.ok,
                "listener": "connected" if self._listener.connected
                else "disconnected" if self.watching else "idle"}

    def _publish_keys(self, state: str, log_key: str) -> tuple[list[str], list[Arg]]:
        return [state, log_key], ["SPUBLISH", self._replid]

    def _origin(self, channel: str) -> str:
        return slot_key(self.prefix, channel_slot(channel), "origin")

    def _start_connection(self, conn: redis.connection.AbstractConnection) -> list[tuple[Arg, ...]]:
        role, replid = _replication(conn)
        if role != "master":
            raise redis.ConnectionError("the node is a replica, not the master")
        if replid != self._replid:  # what is queued carries the old id: fail it
            self._replid = replid
            raise redis.ConnectionError("the shard's master changed")
        return self._load_scripts()

    def _failed(self, exc: Exception) -> None:
        """Count a failure for the cluster too; a redirection (the node answers, the map is
        out of date) is no fault of the shard's."""
        self._cluster.errors += 1
        self._cluster.refresh_soon()
        if str(exc).startswith(REDIRECTED):
            self.errors += 1
        else:
            super()._failed(exc)

    def _listener_failed(self, error: str) -> None:
        super()._listener_failed(error)
        self._cluster.refresh_soon()


def _replication(conn: redis.connection.AbstractConnection) -> tuple[str, str]:
    """A node's role and replication id (``INFO replication``)."""
    conn.send_command("INFO", "replication")
    text = conn.read_response()
    text = text.decode() if isinstance(text, bytes) else text
    info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return info.get("role", ""), info.get("master_replid", "")


class ClusterBroker(Broker):
    """Ids, history and delivery shared by every process, over the shards of a Redis Cluster."""

    shared = True

    def __init__(
        self, url: str, *, history_size: int, history_ttl: float, prefix: str = "wsrelay",
        timeout: float = 3.0, heartbeat: float = 5.0, backoff: tuple[float, float] = (0.1, 5.0),
        max_pending: int = MAX_PENDING, refresh: float = REFRESH,
        send_delay: float = SEND_DELAY,
    ) -> None:
        super().__init__(history_size=history_size, history_ttl=history_ttl)
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.refresh = refresh
        self._spec: ClusterUrl = parse_cluster_url(url)
        self._options: dict[str, Any] = {
            "history_size": history_size, "history_ttl": history_ttl, "prefix": prefix,
            "timeout": timeout, "heartbeat": heartbeat, "backoff": backoff,
            "max_pending": max_pending, "send_delay": send_delay,
            # one name on every shard: a presence report stays this worker's when its
            # channel moves to another shard
            "worker": f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
        }
        self._map: NodesManager | None = None
        self._shards: dict[str, Shard] = {}
        #: Each slot's shard, as found since the map was last read (finding it costs more
        #: than a publish's own work in this process).
        self._routes: list[Shard | None] = [None] * SLOTS
        #: The shard whose listener watches each watched channel; and the channels watched
        #: before any node answered (how many times each), for the first map to place.
        self._watched: dict[str, Shard] = {}
        self._unplaced: dict[str, int] = {}
        #: Watched channels whose subscription a node ended or refused: subscribed again
        #: (where the map says) at the next refresh.
        self._dropped: set[str] = set()
        #: Who takes a watched channel's messages instead of the hub (the control channel's).
        self._receivers: dict[str, Deliver] = {}
        self._wanted = Event()
        #: Held while the map or a shard is made: callers at once make one.
        self._making = Semaphore()
        self._greenlet: gevent.Greenlet | None = None
        self._closed = False
        self._error: str | None = None

    # -- the Broker interface ---------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        super().start(deliver)
        for shard in self._shards.values():
            shard.start(deliver)

    def publish(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Message:
        publishing = self.publish_async(channel, data, binary=binary, sender=sender, author=author)
        return publishing.result(3 * self.timeout)

    def publish_async(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Publishing:
        return self._shard(channel).publish_async(channel, data, binary=binary, sender=sender,
                                                  author=author)

    def history(self, channel: str, since: MessageId | None) -> History:
        if channel in self._unplaced:
            raise BrokerUnavailable("the message broker is unavailable (not subscribed)")
        return (self._watched.get(channel) or self._shard(channel)).history(channel, since)

    def watch(self, channel: str) -> None:
        """Subscribe on the shard of the channel's slot; with no slot map yet (no node
        answers), once there is one."""
        shard = self._watched.get(channel)
        if shard is None:
            try:
                shard = self._shard(channel)
            except BrokerUnavailable:
                self._unplaced[channel] = self._unplaced.get(channel, 0) + 1
                return
            self._watched[channel] = shard
        shard.watch(channel, self._receivers.get(channel))

    def listen_control(self, receive: Control) -> None:
        """Watch the control channel on its slot's shard; it follows its slot like any
        watched channel, and replays what it missed after a reconnection."""
        self._receivers[CONTROL_CHANNEL] = lambda message: receive(message.data)
        self.watch(CONTROL_CHANNEL)

    def send_control(self, payload: bytes) -> None:
        """Publish ``payload`` on the control channel, once its shard has taken it."""
        self.publish(CONTROL_CHANNEL, payload)

    def unwatch(self, channel: str) -> None:
        shard = self._watched.get(channel)
        if shard is not None:
            shard.unwatch(channel)
            if channel not in shard._listener.watches:
                del self._watched[channel]
        elif channel in self._unplaced:
            self._unplaced[channel] -= 1
            if not self._unplaced[channel]:
                del self._unplaced[channel]

    def presence(self, channel: str, local: int) -> int:
        return self._shard(channel).presence(channel, local)

    def report_presence(self, counts: dict[str, int]) -> None:
        by_shard: dict[Shard, dict[str, int]] = {}
        for channel, count in counts.items():
            try:
                by_shard.setdefault(self._shard(channel), {})[channel] = count
            except BrokerUnavailable:
                self.errors += 1
        for shard, part in by_shard.items():
            shard.report_presence(part)

    def sweep(self) -> None:
        for shard in list(self._shards.values()):
            shard.sweep()

    def status(self) -> dict[str, object]:
        shards = {name: shard.status() for name, shard in self._shards.items()}
        ok = self._error is None and all(shard.ok for shard in self._shards.values())
        return {
            "broker": "redis-cluster",
            "ok": ok,
            "url": redact(self.url),
            "prefix": self.prefix,
            "watched": len(self._watched),
            "reconnects": sum(int(str(s["reconnects"])) for s in shards.values()),
            "error": self._error or next((s["error"] for s in shards.values() if s["error"]),
                                         None),
            "shards": shards,
        }

    def close(self) -> None:
        self._closed = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=self.timeout)
            self._greenlet = None
        for shard in self._shards.values():
            shard.close()
        if self._map is not None:
            self._map.close()

    # -- the slot map -----------------------------------------------------------------

    def refresh_soon(self) -> None:
        """A shard failed or a node redirected: read the slot map again now."""
        self._wanted.set()

    def dropped(self, channel: str) -> None:
        """A node ended or refused ``channel``'s subscription (its slot moved, or the cluster
        is down): subscribe again where the map, read again, says."""
        self._dropped.add(channel)
        self.refresh_soon()

    def _shard(self, channel: str) -> Shard:
        """The shard serving ``channel``'s slot (made on first use)."""
        slot = channel_slot(channel)
        shard = self._routes[slot]
        if shard is not None:
            return shard
        nodes = self._map or self._load_map()
        try:
            node = nodes.get_node_from_slot(slot)
        except (redis.RedisError, RedisClusterException) as exc:  # a slot of no master
            self.refresh_soon()
            raise BrokerUnavailable(f"the message broker is unavailable ({exc})") from exc
        shard = self._shards.get(node.name) or self._new_shard(node)
        self._routes[slot] = shard
        return shard

    def _new_shard(self, node: ClusterNode) -> Shard:
        """The shard of a master not used yet: one, however many callers ask at once (making
        it asks the node for its replication id, and others may ask meanwhile)."""
        with self._making:
            shard = self._shards.get(node.name)
            if shard is None:
                shard = Shard(self._spec.node_url(node.host, node.port), self, **self._options)
                # epochs never go back, whichever shard a channel is on
                shard._last_epoch = max((s._last_epoch for s in self._shards.values()),
                                        default=0)
                self._shards[node.name] = shard
                if self._deliver is not None:
                    shard.start(self._deliver)
            return shard

    def _load_map(self) -> NodesManager:
        """Read the slot map (``CLUSTER SLOTS``) from the first node that answers; from the
        first try on, the refresher keeps it up to date."""
        if self._greenlet is None and not self._closed:
            self._greenlet = gevent.spawn(self._refresher)
        try:
            with self._making:  # one map, however many callers at once
                if self._map is None:  # reads the map as it is made
                    tls: dict[str, Any] = {"ssl": True} if self._spec.tls else {}
                    self._map = NodesManager(
                        [ClusterNode(host, port) for host, port in self._spec.nodes],
                        require_full_coverage=False, username=self._spec.username,
                        password=self._spec.password, socket_timeout=self.timeout,
                        socket_connect_timeout=self.timeout, **tls,
                    )
                else:
                    self._map.initialize()
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            raise BrokerUnavailable(f"the message broker is unavailable ({exc})") from exc
        self._error = None
        self._routes = [None] * SLOTS
        return self._map

    def _refresher(self) -> None:
        """Refresh the map now and then (at once when asked), and follow what moved."""
        while not self._closed:
            failing = self._error is not None or not all(s.ok for s in self._shards.values())
            self._wanted.wait(REFRESH_FAILING if failing else self.refresh)
            self._wanted.clear()
            with contextlib.suppress(BrokerUnavailable):
                self._follow(self._load_map())
            for shard in list(self._shards.values()):
                shard.probe()
            gevent.sleep(REFRESH_FAILING / 5)  # a burst of redirections costs one refresh

    def _follow(self, nodes: NodesManager) -> None:
        """Move each watched channel to its slot's owner (and subscribe a dropped one again);
        close shards of no slot."""
        unplaced, self._unplaced = self._unplaced, {}
        dropped, self._dropped = self._dropped, set()
        for channel, count in unplaced.items():
            for _ in range(count):
                self.watch(channel)
        for channel, shard in list(self._watched.items()):
            try:
                owner = self._shard(channel)
            except BrokerUnavailable:
                self._dropped |= dropped & {channel}  # still to be subscribed again
                continue
            if owner is not shard or channel in dropped:
                self._watched[channel] = owner
                watch = shard._listener.release(channel)
                if watch is not None:
                    log.info("channel %s: subscribing on %s", channel, redact(owner.url))
                    owner._listener.adopt(watch)
        masters = {node.name for node in nodes.get_nodes_by_server_type("primary")}
        for name, shard in list(self._shards.items()):
            if name not in masters and not shard.watching:
                del self._shards[name]
                shard.close()
