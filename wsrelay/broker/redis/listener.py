"""The Redis broker's one pub/sub connection per worker, and the greenlet that reads it.

It subscribes to a channel only while the hub has local subscribers for it,
and hands messages to the hub in id order. A subscription counts as active
once Redis acknowledged it (:attr:`Watch.subscribed`); from then on
:attr:`Watch.delivered` tells how far the channel was handed over, which is
what a history read waits for (see :meth:`RedisBroker.history
<wsrelay.broker.redis.broker.RedisBroker.history>`).

On any failure it reconnects with jittered exponential backoff, resubscribes,
and replays from history what was published while it was away (dropping
duplicates by id) before going live.

On a Redis Cluster each shard has its listener (:class:`~.cluster.ShardListener`,
``sharded``): sharded pub/sub (``SSUBSCRIBE``, one channel per command, since a
command's channels must share a slot), and a channel whose slot moved goes to
the new owner's listener (:meth:`Listener.release`, :meth:`Listener.adopt`):
the watch's ``delivered`` goes with it, so the new listener replays exactly
what was missed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import hiredis
import redis
from gevent.event import Event
from gevent.lock import Semaphore

from ...fairness import let_others_run
from ...ids import MessageId
from ...message import Message
from ..base import BrokerUnavailable, Deliver, History
from .codec import decode
from .sockets import receive_into

log = logging.getLogger(__name__)

#: What one read of the pub/sub connection takes at most: one batch for the hub. It reads
#: into a buffer kept for the connection: ``recv`` of a new 256 KiB bytes object costs some
#: 20 µs more than the read itself, on every message of a quiet channel.
READ_SIZE = 256 * 1024


@dataclass(eq=False)
class Watch:
    """A channel this worker subscribes to, and how far it has been handed to the hub."""

    channel: str
    key: bytes
    count: int = 1
    subscribed: Event = field(default_factory=Event)
    #: The last id handed to the hub, or the channel's position when the subscription was
    #: confirmed (everything up to it is in the history); live messages at or below it are
    #: duplicates, and every later message arrives live (or is replayed after a reconnect).
    delivered: MessageId | None = None
    #: History readers waiting until ``delivered`` reaches an id.
    readers: list[tuple[MessageId, Event]] = field(default_factory=list)
    #: Takes the channel's messages instead of the hub (the control channel's receiver).
    receive: Deliver | None = None

    def wait_delivered(self, cursor: MessageId, timeout: float) -> bool:
        """Wait until everything up to ``cursor`` was handed over live; False on timeout."""
        if reached(self.delivered, cursor):
            return True
        arrived = Event()
        self.readers.append((cursor, arrived))
        try:
            return arrived.wait(timeout)
        finally:
            self.readers.remove((cursor, arrived))


def reached(delivered: MessageId | None, cursor: MessageId) -> bool:
    """Whether live delivery has passed ``cursor`` (a cursor before any message always has)."""
    return cursor.seq == 0 or (delivered is not None and delivered >= cursor)


class Listener:
    """Subscriptions over one pub/sub connection, read by one greenlet.

    ``read(channel, since)`` reads history (the broker's command), for the
    replay after a (re)subscription; ``on_connected`` is told each time the
    connection is up again, ``on_error`` each time it failed, with the error.
    """

    def __init__(
        self, pool: redis.ConnectionPool, *, name: str, heartbeat: float,
        backoff: tuple[float, float], read: Callable[[str, MessageId | None], History],
        on_connected: Callable[[], None], on_error: Callable[[str], None],
    ) -> None:
        self._pool = pool
        #: Client name of the pub/sub connection (``CLIENT LIST`` shows it).
        self.name = name
        self.heartbeat = heartbeat
        self.backoff = backoff
        self._read = read
        self._on_connected = on_connected
        self._on_error = on_error
        self.deliver: Deliver | None = None
        self.watches: dict[str, Watch] = {}
        self._by_key: dict[bytes, Watch] = {}
        self._greenlet: gevent.Greenlet | None = None
        self._conn: redis.connection.AbstractConnection | None = None
        self._send_lock = Semaphore()
        #: Watches whose SUBSCRIBE (or None: UNSUBSCRIBE) Redis has yet to acknowledge, in order.
        self._acks: deque[tuple[bytes, Watch | None]] = deque()
        self.connected = False
        #: Connections made so far (the first one and every reconnection).
        self.connections = 0
        self._failing = False
        self._closed = False
        #: When the connection was last heard from, and whether the watchdog shut it down
        #: for its silence.
        self._heard = 0.0
        self._silent = False

    #: Sharded pub/sub (``SSUBSCRIBE``): a Redis Cluster shard's listener (:mod:`.cluster`).
    sharded = False

    def start(self) -> None:
        if self._greenlet is None and not self._closed:
            self._greenlet = gevent.spawn(self._listen)

    def close(self, timeout: float) -> None:
        self._closed = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)
            self._greenlet = None

    def watch(self, channel: str, key: bytes, receive: Deliver | None = None) -> None:
        """Subscribe to ``key`` for ``channel`` (asynchronously), or count one more interest;
        ``receive``: who takes its messages, if not the hub."""
        watch = self.watches.get(channel)
        if watch is not None:
            watch.count += 1
            return
        watch = Watch(channel, key, receive=receive)
        self.watches[channel] = self._by_key[key] = watch
        self.start()
        self._send("SUBSCRIBE", watch)

    def unwatch(self, channel: str) -> None:
        watch = self.watches.get(channel)
        if watch is None:
            return
        watch.count -= 1
        if watch.count <= 0:
            del self.watches[channel], self._by_key[watch.key]
            self._send("UNSUBSCRIBE", watch)

    def release(self, channel: str) -> Watch | None:
        """Stop watching ``channel`` whatever its count (its slot moved), and hand its watch
        over, for :meth:`adopt` by the listener of its new owner."""
        watch = self.watches.pop(channel, None)
        if watch is not None:
            del self._by_key[watch.key]
            watch.subscribed.clear()
            self._send("UNSUBSCRIBE", watch)
        return watch

    def adopt(self, watch: Watch) -> None:
        """Watch a channel released by another listener: subscribe, and replay from its
        ``delivered`` once subscribed."""
        self.watches[watch.channel] = self._by_key[watch.key] = watch
        self.start()
        self._send("SUBSCRIBE", watch)

    def _send(self, command: str, watch: Watch) -> None:
        """SUBSCRIBE/UNSUBSCRIBE now if connected; else the listener subscribes on connect."""
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return
            self._acks.append((watch.key, watch if command == "SUBSCRIBE" else None))
            try:
                conn.send_command(("S" if self.sharded else "") + command, watch.key)
            except redis.RedisError as exc:
                log.debug("%s %s failed: %s", command, watch.channel, exc)
                self._conn = None  # the listener notices and starts over

    def _listen(self) -> None:
        """Connect, subscribe, read; on any failure start over after a jittered backoff."""
        least, most = self.backoff
        delay = least
        pool = self._pool
        while not self._closed:
            conn = pool.connection_class(**{
                **pool.connection_kwargs, "client_name": self.name, "protocol": 2,
            })
            began = time.monotonic()
            try:
                conn.connect()
                with self._send_lock:
                    watches = list(self.watches.values())
                    if watches:
                        self._acks.extend((watch.key, watch) for watch in watches)
                        if self.sharded:  # one slot per command
                            for watch in watches:
                                conn.send_command("SSUBSCRIBE", watch.key)
                        else:
                            conn.send_command("SUBSCRIBE", *(watch.key for watch in watches))
                    self._conn = conn
                if self.connections:
                    log.info("redis listener connected again")
                self.connections += 1
                self.connected, self._failing = True, False
                self._on_connected()
                self._read_replies(conn)
            except (redis.RedisError, BrokerUnavailable) as exc:
                if self.connected or not self._failing:
                    log.warning("redis listener disconnected: %s", exc)
                self._failed(exc)
            except Exception as exc:  # a bug must not end delivery for good
                log.exception("redis listener failed")
                self._failed(exc)
            finally:
                with self._send_lock:
                    self._conn = None
                    self._acks.clear()
                self.connected = False
                for watch in self.watches.values():
                    watch.subscribed.clear()
                with contextlib.suppress(Exception):
                    conn.disconnect()
            if time.monotonic() - began > most:
                delay = least
            gevent.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, most)

    def _failed(self, exc: Exception) -> None:
        self._failing = True
        self._on_error(f"{type(exc).__name__}: {exc}")

    def _read_replies(self, conn: redis.connection.AbstractConnection) -> None:
        """Read the connection in blocks: every message a block holds goes to the hub before
        the next read, so a burst is handed over, and flushed, in batches.

        The replies are parsed by hiredis's ``Reader``, fed the bytes read, instead of one
        ``read_response`` per message. Silence is told by a watchdog greenlet
        (:meth:`_watch`), not by a timeout on the socket, which would start and stop a
        timer on every read.
        """
        sock = conn._sock
        if sock is None:
            raise redis.ConnectionError("not connected")
        sock.settimeout(None)
        reader = hiredis.Reader()
        buffer = bytearray(READ_SIZE)
        by_key = self._by_key
        self._heard, self._silent = time.monotonic(), False
        watchdog = gevent.spawn(self._watch, conn, sock)
        try:
            while True:
                # Never let redis-py reconnect this connection quietly, without subscriptions.
                if self._conn is not conn:
                    raise redis.ConnectionError("sending to Redis failed")
                try:
                    size = receive_into(sock, buffer)
                except OSError:
                    if self._silent:
                        raise redis.TimeoutError("no answer to PING") from None
                    raise
                if not size:
                    if self._silent:
                        raise redis.TimeoutError("no answer to PING")
                    raise redis.ConnectionError("Redis closed the pub/sub connection")
                self._heard = time.monotonic()
                reader.feed(buffer, 0, size)
                while (reply := reader.gets()) is not False:
                    if type(reply) is list and reply[0] == b"message":  # most replies: inline
                        watch = by_key.get(reply[1])
                        if watch is not None:
                            self._hand_over(watch, decode(watch.channel, reply[2]))
                    else:
                        self._handle(reply)
                if size == READ_SIZE:  # more is waiting: let the flusher write this batch
                    let_others_run()
        finally:
            watchdog.kill(block=False)

    def _watch(self, conn: redis.connection.AbstractConnection, sock: socket.socket) -> None:
        """Silence for ``heartbeat`` seconds is answered with a PING; silence for another
        ``heartbeat`` after it, or a send that failed, shuts the connection down, so the
        read (and any send stuck on a full buffer) in progress fails."""
        pinged: float | None = None
        while self._conn is conn:
            gevent.sleep(self.heartbeat / 4)
            now = time.monotonic()
            if now - self._heard < self.heartbeat:
                pinged = None
            elif pinged is None:
                pinged = now
                gevent.spawn(self._ping, conn)  # a send may block: the watchdog must not
            elif now - pinged >= self.heartbeat:
                self._silent = True
                break
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _ping(self, conn: redis.connection.AbstractConnection) -> None:
        with self._send_lock:
            if self._conn is conn:
                try:
                    conn.send_command("PING")
                except redis.RedisError:
                    self._conn = None  # the watchdog shuts the connection down

    def _handle(self, reply: object) -> None:
        """One reply of the pub/sub connection other than a message: an acknowledgement, a
        pong (messages are handed over where they are read)."""
        if isinstance(reply, hiredis.ReplyError):
            raise redis.ConnectionError(f"Redis refused: {reply}")
        if not isinstance(reply, list):
            return
        kind = reply[0]
        if kind in (b"subscribe", b"unsubscribe") and self._acks:
            key, watch = self._acks.popleft()
            if key != reply[1]:
                raise redis.ConnectionError(f"unexpected {kind!r} {reply[1]!r}")
            if watch is not None and self.watches.get(watch.channel) is watch:
                self._subscribed(watch)

    def _subscribed(self, watch: Watch) -> None:
        """Redis confirmed a subscription: replay what was missed since the last one.

        Afterwards everything up to the position read here counts as delivered:
        it is in the history, and all that follows it arrives live.
        """
        start = watch.delivered
        page = self._read(watch.channel, start)
        if start is not None:
            if page.reset and page.cursor.epoch == start.epoch:
                log.warning("channel %s: messages were lost while disconnected", watch.channel)
            for message in page.messages:
                self._hand_over(watch, message)
        if watch.delivered is None or watch.delivered < page.cursor:
            self._delivered(watch, page.cursor)
        watch.subscribed.set()

    def _hand_over(self, watch: Watch, message: Message) -> None:
        """Give a message to the hub once: drop ids at or below the last one delivered."""
        last = watch.delivered
        if last is not None and message.id.epoch == last.epoch and message.id.seq <= last.seq:
            return
        deliver = watch.receive or self.deliver
        if deliver is not None:
            try:
                deliver(message)
            except Exception:
                log.exception("delivering %s on %s failed", message.id, message.channel)
        self._delivered(watch, message.id)

    @staticmethod
    def _delivered(watch: Watch, position: MessageId) -> None:
        """Everything up to ``position`` was handed over: wake the readers waiting for it."""
        watch.delivered = position
        for cursor, arrived in watch.readers:
            if reached(position, cursor):
                arrived.set()
