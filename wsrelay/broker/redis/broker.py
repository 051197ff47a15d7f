"""The distributed broker: many workers and hosts share channels through Redis.

Why it is built this way:

* **One order per channel, decided inside Redis.** A Lua script assigns the
  id, appends the message to the channel's history and PUBLISHes it, all in
  one atomic step, so every worker sees the same ids in the same order and
  a message is in the history before any worker can receive it live.
* **Ids are stream ids.** ``MessageId(epoch, seq)`` is stored as the Redis
  stream id ``<epoch>-<seq>``. The epoch is Redis ``TIME`` (ms) when the
  channel's state was created by its first message (reads create nothing: a
  channel without state reads as a virtual epoch, see
  :func:`~wsrelay.broker.base.read_after`); the state expires with the history
  (``history_ttl``, refreshed on use), so a channel that went idle, or a
  Redis that lost its data, starts a new epoch and old cursors read as
  ``reset`` instead of silently skipping messages.
* **History uses the shared rule.** A second script reads the position and
  the retained messages atomically; :func:`~wsrelay.broker.base.read_after`
  then decides exactly as in :class:`MemoryBroker`.
* **Keys use one Redis Cluster hash tag per channel:** ``<prefix>:{<channel>}:state``
  (hash: epoch, seq), ``<prefix>:{<channel>}:log`` (stream; fields ``t`` = ms,
  ``m`` = the encoded message) and the pub/sub channel ``<prefix>:{<channel>}``;
  two keys belong to no channel: ``<prefix>:origin``, when the data began, and
  ``<prefix>:master``, the replication id of the master the workers write to. Requests
  every worker obeys (:mod:`wsrelay.control`) are the messages of :data:`CONTROL_CHANNEL`.
* **One command connection per worker, auto-pipelined** (:mod:`.commands`,
  :mod:`.pipeline`): every publish, history read and presence command of the
  worker shares round trips, each with its own answer; :meth:`RedisBroker.publish_async`
  lets a connection go on reading while its publishes are in flight.
* **One pub/sub connection per broker (per worker)**, read by one listener
  greenlet that hands messages to the hub in id order (:mod:`.listener`). A
  subscription counts as active once Redis acknowledged it:
  :meth:`RedisBroker.history` waits for that, so whatever history does not
  return arrives live. It also waits until what it returns has been handed
  over live: a message published just after the subscription may be both in
  the history read and still on its way over the pub/sub connection, and
  must not reach a subscriber again after the subscriber went live.
* **Faults are visible, never silent.** Commands have timeouts and no
  retries (a retried publish could be stored twice) and raise
  :class:`BrokerUnavailable`. The listener reconnects with jittered
  exponential backoff, resubscribes, and replays from history what was
  published while it was away (dropping duplicates by id) before going live.

The scripts are ``scripts/*.lua`` beside this module (package data); the
encoding of a message in Redis is :mod:`.codec`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from functools import partial
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import redis

from ...ids import MessageId
from ...message import Message
from ..base import Broker, BrokerUnavailable, Control, Deliver, History, Publishing, read_after
from .codec import decode
from .commands import SEND_DELAY, AutoPipeline, wait
from .listener import Listener
from .pipeline import Arg, Reply
from .urls import connection_pool

log = logging.getLogger(__name__)

#: Seconds after which a worker's presence report no longer counts (the hub refreshes
#: its reports every few seconds, so only a crashed or cut-off worker's go stale).
PRESENCE_STALE = 30.0
#: The channel of control messages (:mod:`wsrelay.control`), which every worker watches: a
#: channel like any other in Redis, with a name no client may use (see :mod:`wsrelay.channels`).
CONTROL_CHANNEL = "@control"
#: Commands of a worker that may wait for Redis at once (queued and in flight); past it a
#: caller waits for room, so a flood is slowed rather than buffered.
MAX_PENDING = 8192
#: Publishes joined into one script call at most, and the bytes after which no more join:
#: Redis runs a script alone, so a call is kept short.
MAX_BATCH = 64
MAX_BATCH_BYTES = 256 * 1024


def _text(value: bytes | str) -> str:
    """A reply as text (this client reads bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def _script(name: str) -> str:
    """A Lua script of ``scripts/``, after the prelude every script shares."""
    scripts = files(__package__).joinpath("scripts")
    return scripts.joinpath("prelude.lua").read_text() + scripts.joinpath(name).read_text()


def redact(url: str) -> str:
    """The URL without its password (in the user info or a ``password=`` query item)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, host = netloc.rsplit("@", 1)
        user = user.split(":", 1)[0]
        netloc = f"{user}@{host}" if user else host
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                       if k.lower() != "password"])
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


class _Batch:
    """Publishes of one channel in one queued script call, answered together, in order.

    While the call is still queued, the next publish of the same channel adds its
    words to it instead of queuing a call of its own: a flood costs one script call
    (one state read, one expiry refresh) per round trip, not one per message, and
    the order is the queue's.
    """

    __slots__ = ("channel", "publishes", "reply", "size")

    def __init__(self, channel: str, reply: Reply) -> None:
        self.channel = channel
        self.reply = reply
        #: (publishing, data, binary, sender, author) of each publish, in order.
        self.publishes: list[tuple[Publishing, bytes, bool, str | None, str | None]] = []
        self.size = 0


class RedisBroker(Broker):
    """Ids, history and delivery shared by every process and host on one Redis."""

    shared = True
    #: The pub/sub connection's kind (a hook for :mod:`.cluster`).
    listener_class = Listener

    def __init__(
        self, url: str, *, history_size: int, history_ttl: float, prefix: str = "wsrelay",
        timeout: float = 3.0, heartbeat: float = 5.0, backoff: tuple[float, float] = (0.1, 5.0),
        max_pending: int = MAX_PENDING, worker: str | None = None,
        send_delay: float = SEND_DELAY,
    ) -> None:
        """``send_delay``: seconds a busy worker gathers commands before its next round trip
        to Redis (see :mod:`.commands`); 0 sends each as soon as the connection is free."""
        super().__init__(history_size=history_size, history_ttl=history_ttl)
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        # The pool only turns the URL into connection settings: each connection is made
        # by the one that owns it (the command pipeline, the listener).
        pool = connection_pool(url, timeout)
        self._pool = pool
        self._scripts = {name: _script(f"{name}.lua") for name in ("publish", "read")}
        self._shas = {name: hashlib.sha1(source.encode()).hexdigest()
                      for name, source in self._scripts.items()}
        self._ttl_ms = max(1, round(history_ttl * 1000))
        #: When this Redis's data began (see the read script): a key of no channel.
        self._origin_key = f"{prefix}:origin"
        #: The replication id of the master the workers write to, set by each command
        #: connection as it starts: a channel whose position was written under another
        #: master (before a failover, which may have lost the last writes) starts a new
        #: epoch at its next message, so no id is handed out twice.
        self._master_key = f"{prefix}:master"
        self._last_epoch = 0
        self._commands_ok = True
        self._error: str | None = None
        self._batch: _Batch | None = None
        #: Names this worker's connections and presence reports (a Cluster's shards share it).
        worker = worker or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._commands = AutoPipeline(
            pool, name=f"{prefix}-commands-{worker}", timeout=timeout, max_pending=max_pending,
            on_connect=self._start_connection, on_error=self._failed, send_delay=send_delay,
        )
        self._listener = self.listener_class(
            pool, name=f"{prefix}-listener-{worker}",
            heartbeat=heartbeat, backoff=backoff, read=self._read,
            on_connected=self._listener_connected, on_error=self._listener_failed,
        )

    # -- the Broker interface ---------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        super().start(deliver)
        self._listener.deliver = deliver
        self._listener.start()

    def publish(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Message:
        publishing = self.publish_async(channel, data, binary=binary, sender=sender, author=author)
        return publishing.result(3 * self.timeout)  # the connection's timeouts resolve it

    def publish_async(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None,
        author: str | None = None,
    ) -> Publishing:
        """Queue the publish in the worker's pipeline; resolved when Redis answered.

        A publish to the channel of the script call queued last joins that call
        (see :class:`_Batch`), else it starts a call of its own.
        """
        data = bytes(data)
        words = (int(binary), sender or "", author or "", data)
        batch = self._batch
        if (batch is None or batch.channel != channel or len(batch.publishes) >= MAX_BATCH
                or batch.size >= MAX_BATCH_BYTES or not self._commands.extend(batch.reply, *words)):
            state, log_key, topic = self._keys(channel)
            keys, more = self._publish_keys(state, log_key)
            reply = self._run_script("publish", keys, [self.history_size, topic, *more, *words])
            batch = self._batch = _Batch(channel, reply)
            reply.callback = partial(self._answer, batch)  # a new reply: not answered yet
        publishing = Publishing()
        batch.publishes.append((publishing, data, binary, sender or None, author))
        batch.size += len(data)
        return publishing

    def _answer(self, batch: _Batch, reply: Reply) -> None:
        """Redis answered a publish call: each of its publishes gets the next id, in order
        (or all of them the error)."""
        if self._batch is batch:
            self._batch = None
        try:
            epoch, seq, ms = self._result(reply)
        except BrokerUnavailable as exc:
            for publishing, *_ in batch.publishes:
                publishing.resolve(None, exc)
            return
        self._last_epoch = max(self._last_epoch, epoch)
        channel, when = batch.channel, ms / 1000
        for publishing, data, binary, sender, author in batch.publishes:
            publishing.resolve(Message(channel, MessageId(epoch, seq), data, binary, sender, when,
                                       author))
            seq += 1

    def history(self, channel: str, since: MessageId | None) -> History:
        """Read history; for a watched channel, only once its subscription is active, and
        return only once every message up to the cursor has been handed over live.

        So a caller that watches, then reads, gets every later message live, and
        none it already read.
        """
        watch = self._listener.watches.get(channel)
        if watch is None:
            return self._read(channel, since)
        if not watch.subscribed.wait(self.timeout):
            raise BrokerUnavailable("the message broker is unavailable (not subscribed)")
        page = self._read(channel, since)
        if not watch.wait_delivered(page.cursor, self.timeout):
            raise BrokerUnavailable("the message broker is unavailable (not delivering)")
        return page

    def listen_control(self, receive: Control) -> None:
        """Watch :data:`CONTROL_CHANNEL` for ``receive`` as long as the broker runs: its
        messages are replayed from its history after a reconnection like any channel's, so
        a worker whose pub/sub connection was down misses none (within the history)."""
        self.watch(CONTROL_CHANNEL, lambda message: receive(message.data))

    def send_control(self, payload: bytes) -> None:
        """Publish ``payload`` on :data:`CONTROL_CHANNEL`, once Redis has taken it."""
        self.publish(CONTROL_CHANNEL, payload)

    def watch(self, channel: str, receive: Deliver | None = None) -> None:
        """Subscribe (asynchronously: a following :meth:`history` waits until it is active);
        ``receive``: who takes its messages, if not the hub (the control channel's receiver)."""
        self._listener.watch(channel, self._keys(channel)[2].encode(), receive)

    def unwatch(self, channel: str) -> None:
        self._listener.unwatch(channel)

    @property
    def listener_name(self) -> str:
        """Client name of the pub/sub connection (``CLIENT LIST`` shows it)."""
        return self._listener.name

    def presence(self, channel: str, local: int) -> int:
        """This worker's count plus the fresh counts other workers reported for ``channel``."""
        entries = self._call("HGETALL", self._presence_key(channel))
        fresh_after = time.time() - PRESENCE_STALE
        total = local
        for worker, value in zip(entries[::2], entries[1::2], strict=True):
            count, _, stamp = _text(value).partition(" ")
            if _text(worker) != self.listener_name and float(stamp or 0) > fresh_after:
                total += int(count)
        return total

    def report_presence(self, counts: dict[str, int]) -> None:
        """Store this worker's counts, stamped; a crashed worker's counts go stale after
        :data:`PRESENCE_STALE` seconds and stop counting. Nobody waits for the answers."""
        now = time.time()
        try:
            for channel, count in counts.items():
                key = self._presence_key(channel)
                if count:
                    self._submit("HSET", key, self.listener_name, f"{count} {now:.3f}")
                    self._submit("EXPIRE", key, int(PRESENCE_STALE) * 2)
                else:
                    self._submit("HDEL", key, self.listener_name)
        except BrokerUnavailable as exc:
            self._failed(exc)

    def _presence_key(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:presence"

    def sweep(self) -> None:
        """Keep the position of watched channels alive, as long as they have subscribers."""
        try:
            for channel in list(self._listener.watches):
                self._submit("PEXPIRE", self._keys(channel)[0], self._ttl_ms)
        except BrokerUnavailable as exc:
            self._failed(exc)

    def status(self) -> dict[str, object]:
        return {
            "broker": "redis",
            "ok": self._listener.connected and self._commands_ok,
            "url": redact(self.url),
            "prefix": self.prefix,
            "listener": "connected" if self._listener.connected else "disconnected",
            "watched": len(self._listener.watches),
            "reconnects": max(0, self._listener.connections - 1),
            "error": self._error,
            "round_trips": self._commands.round_trips,
            "commands": self._commands.commands,
        }

    def close(self) -> None:
        self._listener.close(self.timeout)
        self._commands.close()

    # -- commands -----------------------------------------------------------------------

    def _keys(self, channel: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:{{{channel}}}"
        return f"{base}:state", f"{base}:log", base

    def _publish_keys(self, state: str, log_key: str) -> tuple[list[str], list[Arg]]:
        """The publish script's keys, and its arguments before the messages' (a hook for
        :mod:`.cluster`): here the master key, one for the whole Redis, and PUBLISH."""
        return [state, log_key, self._master_key], ["PUBLISH", ""]

    def _origin(self, channel: str) -> str:
        """The origin key the read script of ``channel`` uses (one per Redis here)."""
        return self._origin_key

    def _start_connection(self, conn: redis.connection.AbstractConnection) -> list[tuple[Arg, ...]]:
        """What starts each command connection: check that Redis is the master, mark the data
        with the master's replication id (see :attr:`_master_key`), load the scripts."""
        conn.send_command("INFO", "replication")
        info = dict(line.split(":", 1) for line in _text(conn.read_response()).splitlines()
                    if ":" in line)
        if info.get("role") != "master":
            raise redis.ConnectionError("Redis is a replica, not the master")
        return [*self._mark_master(info.get("master_replid", "")), *self._load_scripts()]

    def _mark_master(self, replid: str) -> list[tuple[Arg, ...]]:
        """What tells the publish script the master's replication id (see :attr:`_master_key`)."""
        return [("SET", self._master_key, replid)]

    def _load_scripts(self) -> list[tuple[Arg, ...]]:
        """The scripts, so that EVALSHA finds them."""
        return [("SCRIPT", "LOAD", source) for source in self._scripts.values()]

    def _run_script(self, name: str, keys: list[str], args: list[Arg]) -> Reply:
        return self._commands.submit(
            "EVALSHA", self._shas[name], len(keys), *keys, self._last_epoch + 1, self._ttl_ms,
            *args,
        )

    def _submit(self, *args: Arg) -> Reply:
        """A command whose answer nobody waits for; a failure is counted and reported."""
        reply = self._commands.submit(*args)
        reply.callback = self._check
        return reply

    def _check(self, reply: Reply) -> None:
        with contextlib.suppress(BrokerUnavailable):
            self._result(reply)

    def _call(self, *args: Arg) -> Any:
        """A command, waited for: its answer, or :class:`BrokerUnavailable`."""
        return self._result_of(self._commands.submit(*args))

    def _result(self, reply: Reply) -> Any:
        """A reply's value; its error counted, reported and raised as BrokerUnavailable."""
        error = reply.error
        if not reply.done:
            error = BrokerUnavailable("the message broker is unavailable (no answer)")
        if error is not None:
            if str(error).startswith("NOSCRIPT"):  # flushed: load again, ahead of what follows
                for command in self._load_scripts():
                    self._commands.submit_now(*command)
            if not isinstance(error, BrokerUnavailable):
                self._failed(error)
                error = BrokerUnavailable(f"the message broker failed: {error}")
            raise error
        self._commands_ok = True
        return reply.value

    def _read(self, channel: str, since: MessageId | None) -> History:
        state, log_key, _ = self._keys(channel)
        cursor: list[Arg] = ["", ""] if since is None else [since.epoch, since.seq]
        epoch, seq, first, after, origin = self._result_of(
            self._run_script("read", [state, log_key, self._origin(channel)], cursor)
        )
        self._last_epoch = max(self._last_epoch, epoch)
        retained = [decode(channel, fields[-1]) for _, fields in after]
        if first and (not after or first[0][0] != after[0][0]):
            retained.insert(0, decode(channel, first[0][1][-1]))
        return read_after(retained, epoch, seq, since, ttl_ms=self._ttl_ms, origin=origin)

    def _result_of(self, reply: Reply) -> Any:
        """Wait for a reply (the connection's timeouts resolve it) and take its result."""
        with contextlib.suppress(BrokerUnavailable):
            wait(reply, self.timeout)
        return self._result(reply)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self._commands_ok:
            log.warning("redis command failed: %s", exc)
        self._commands_ok = False
        self._error = f"{type(exc).__name__}: {exc}"

    def _listener_connected(self) -> None:
        """The pub/sub connection is up (again): Redis answers, so commands may work too."""
        self._commands_ok, self._error = True, None

    def _listener_failed(self, error: str) -> None:
        self._error = error
