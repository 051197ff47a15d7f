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
  one key belongs to no channel: ``<prefix>:origin``, when the data began.
* **One pub/sub connection per broker (per worker)**, read by one listener
  greenlet that hands messages to the hub in id order. It subscribes to a
  channel only while the hub has local subscribers for it. A subscription
  counts as active once Redis acknowledged it: :meth:`RedisBroker.history`
  waits for that, so whatever history does not return arrives live. It also
  waits until what it returns has been handed over live: a message published
  just after the subscription may be both in the history read and still on
  its way over the pub/sub connection, and must not reach a subscriber again
  after the subscriber went live.
* **Faults are visible, never silent.** Commands have timeouts and no
  retries (a retried publish could be stored twice) and raise
  :class:`BrokerUnavailable`. The listener reconnects with jittered
  exponential backoff, resubscribes, and replays from history what was
  published while it was away (dropping duplicates by id) before going live.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

import gevent
import redis
from gevent.event import Event
from gevent.lock import Semaphore
from redis.backoff import NoBackoff
from redis.retry import Retry

from ...ids import MessageId
from ...message import Message
from ..base import Broker, BrokerUnavailable, Deliver, History, read_after

log = logging.getLogger(__name__)

#: Seconds after which a worker's presence report no longer counts (the hub refreshes
#: its reports every few seconds, so only a crashed or cut-off worker's go stale).
PRESENCE_STALE = 30.0

# KEYS: state, log (and, to read, the origin). ARGV[1]: the lowest epoch a new state may take,
# ARGV[2]: TTL in ms.
_PRELUDE = """
local state, log = KEYS[1], KEYS[2]
local ttl = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- The last id the history generated (epoch, seq), or nil when there is no history.
local function last_logged()
  if redis.call('EXISTS', log) == 0 then return nil end
  local info = redis.call('XINFO', 'STREAM', log)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local epoch, seq = string.match(info[i + 1], '^(%d+)-(%d+)')
      return tonumber(epoch), tonumber(seq)
    end
  end
end

-- Drop retained messages older than the TTL (entries are in time order).
local function trim_age()
  local cutoff = now - ttl
  while true do
    local batch = redis.call('XRANGE', log, '-', '+', 'COUNT', 32)
    local old = {}
    for _, entry in ipairs(batch) do
      if tonumber(entry[2][2]) >= cutoff then break end
      old[#old + 1] = entry[1]
    end
    if #old > 0 then redis.call('XDEL', log, unpack(old)) end
    if #old < 32 then return end
  end
end
"""

# ARGV[3]: size, [4]: binary '0'/'1', [5]: sender ('' for none), [6]: data, [7]: pub/sub channel.
# The channel's state is created here, by its first message, and only here.
_PUBLISH = _PRELUDE + """
local s = redis.call('HMGET', state, 'epoch', 'seq')
local epoch = tonumber(s[1])
if not epoch then  -- a new epoch, after any older one
  epoch = math.max(now, tonumber(ARGV[1]))
  local logged = last_logged()
  if logged then  -- history without state: never reuse its epoch
    epoch = math.max(epoch, logged + 1)
    redis.call('DEL', log)
  end
  redis.call('HSET', state, 'epoch', string.format('%d', epoch), 'seq', '0')
end
local seq = redis.call('HINCRBY', state, 'seq', 1)
local sender = ARGV[5]
local message = string.format('%d %d %d %s %d\\n', epoch, seq, now, ARGV[4], #sender)
  .. sender .. ARGV[6]
redis.call('XADD', log, 'MAXLEN', ARGV[3], string.format('%d-%d', epoch, seq),
  't', string.format('%d', now), 'm', message)
trim_age()
redis.call('PEXPIRE', state, ttl)
redis.call('PEXPIRE', log, ttl)
redis.call('PUBLISH', ARGV[7], message)
return {epoch, seq, now}
"""

# ARGV[3], [4]: the cursor's epoch and seq ('' for none). Returns the position, the first
# retained entry (for the gap check), the entries after the cursor, and the data set's
# origin (0 when the cursor does not need it). Writes nothing of the channel: one without
# state reads as a virtual epoch, now at seq 0 (or, where its history outlived its state,
# as that history's last id with nothing retained, so that any cursor before it is a gap).
# The origin is the one key a read may write: the time this Redis's data began (it is
# missing after a restart without persistence or a flush), set by the first read that
# hands out or checks a seq-0 cursor; such a cursor from before it is not trusted.
_READ = _PRELUDE + """
local function origin()
  local value = redis.call('GET', KEYS[3])
  if value then return tonumber(value) end
  redis.call('SET', KEYS[3], string.format('%d', now))
  return now
end
local since_epoch, since_seq = tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', state, 'epoch', 'seq')
local epoch, seq = tonumber(s[1]), tonumber(s[2])
if not epoch then
  local logged_epoch, logged_seq = last_logged()
  if logged_epoch then return {logged_epoch, logged_seq, {}, {}, 0} end
  local needed = origin()
  if not since_epoch or since_seq ~= 0 then needed = 0 end
  return {now, 0, {}, {}, needed}
end
redis.call('PEXPIRE', state, ttl)
trim_age()
if not since_epoch then return {epoch, seq, {}, {}, 0} end
if since_epoch ~= epoch or since_seq > seq then
  local needed = 0
  if since_seq == 0 then needed = origin() end
  return {epoch, seq, {}, redis.call('XRANGE', log, '-', '+'), needed}
end
local start = string.format('%d-%d', epoch, since_seq + 1)
return {epoch, seq, redis.call('XRANGE', log, '-', '+', 'COUNT', 1),
  redis.call('XRANGE', log, start, '+'), 0}
"""


def _decode(channel: str, payload: bytes) -> Message:
    """A message as the scripts encode it: ``epoch seq ms binary sender_len\\n`` sender data."""
    head, _, rest = payload.partition(b"\n")
    epoch, seq, ms, binary, sender_len = (int(part) for part in head.split())
    sender = rest[:sender_len].decode("utf-8") if sender_len else None
    return Message(channel, MessageId(epoch, seq), rest[sender_len:], bool(binary), sender,
                   ms / 1000)


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


@dataclass(eq=False)
class _Watch:
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


class RedisBroker(Broker):
    """Ids, history and delivery shared by every process and host on one Redis."""

    shared = True

    def __init__(
        self, url: str, *, history_size: int, history_ttl: float, prefix: str = "wsrelay",
        timeout: float = 3.0, heartbeat: float = 5.0, backoff: tuple[float, float] = (0.1, 5.0),
        max_connections: int = 64,
    ) -> None:
        super().__init__(history_size=history_size, history_ttl=history_ttl)
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.backoff = backoff
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )
        pool.connection_kwargs["decode_responses"] = False
        self._redis = redis.Redis(connection_pool=pool)
        self._publish_script = self._redis.register_script(_PUBLISH)
        self._read_script = self._redis.register_script(_READ)
        self._ttl_ms = max(1, round(history_ttl * 1000))
        #: When this Redis's data began (see the read script): the one key not of a channel.
        self._origin_key = f"{prefix}:origin"
        self._last_epoch = 0
        #: Client name of the pub/sub connection (``CLIENT LIST`` shows it).
        self.listener_name = f"{prefix}-listener-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._watches: dict[str, _Watch] = {}
        self._by_key: dict[bytes, _Watch] = {}
        self._listener: gevent.Greenlet | None = None
        self._conn: redis.connection.AbstractConnection | None = None
        self._send_lock = Semaphore()
        #: Watches whose SUBSCRIBE (or None: UNSUBSCRIBE) Redis has yet to acknowledge, in order.
        self._acks: deque[tuple[bytes, _Watch | None]] = deque()
        self._connected = False
        self._commands_ok = True
        self._error: str | None = None
        self._connections = 0
        self._closed = False

    # -- the Broker interface ---------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        super().start(deliver)
        self._ensure_listener()

    def publish(
        self, channel: str, data: bytes, *, binary: bool = False, sender: str | None = None
    ) -> Message:
        data = bytes(data)
        state, log_key, topic = self._keys(channel)
        epoch, seq, ms = self._call(self._publish_script, [state, log_key], [
            self.history_size, int(binary), sender or "", data, topic,
        ])
        return Message(channel, MessageId(epoch, seq), data, binary, sender or None, ms / 1000)

    def history(self, channel: str, since: MessageId | None) -> History:
        """Read history; for a watched channel, only once its subscription is active, and
        return only once every message up to the cursor has been handed over live.

        So a caller that watches, then reads, gets every later message live, and
        none it already read.
        """
        watch = self._watches.get(channel)
        if watch is None:
            return self._read(channel, since)
        if not watch.subscribed.wait(self.timeout):
            raise BrokerUnavailable("the message broker is unavailable (not subscribed)")
        page = self._read(channel, since)
        if not _reached(watch.delivered, page.cursor):
            arrived = Event()
            watch.readers.append((page.cursor, arrived))
            try:
                if not arrived.wait(self.timeout):
                    raise BrokerUnavailable("the message broker is unavailable (not delivering)")
            finally:
                watch.readers.remove((page.cursor, arrived))
        return page

    def watch(self, channel: str) -> None:
        """Subscribe (asynchronously: a following :meth:`history` waits until it is active)."""
        watch = self._watches.get(channel)
        if watch is not None:
            watch.count += 1
            return
        watch = _Watch(channel, self._keys(channel)[2].encode())
        self._watches[channel] = self._by_key[watch.key] = watch
        self._ensure_listener()
        self._send("SUBSCRIBE", watch)

    def unwatch(self, channel: str) -> None:
        watch = self._watches.get(channel)
        if watch is None:
            return
        watch.count -= 1
        if watch.count <= 0:
            del self._watches[channel], self._by_key[watch.key]
            self._send("UNSUBSCRIBE", watch)

    def presence(self, channel: str, local: int) -> int:
        """This worker's count plus the fresh counts other workers reported for ``channel``."""
        try:
            entries = self._redis.hgetall(self._presence_key(channel))
        except redis.RedisError as exc:
            self._failed(exc)
            raise BrokerUnavailable("the message broker is unavailable") from exc
        fresh_after = time.time() - PRESENCE_STALE
        total = local
        for worker, value in entries.items():
            count, _, stamp = value.partition(b" ")
            if worker.decode() != self.listener_name and float(stamp or 0) > fresh_after:
                total += int(count)
        return total

    def report_presence(self, counts: dict[str, int]) -> None:
        """Store this worker's counts, stamped, in one pipeline; a crashed worker's counts
        go stale after :data:`PRESENCE_STALE` seconds and stop counting."""
        now = time.time()
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for channel, count in counts.items():
                    key = self._presence_key(channel)
                    if count:
                        pipe.hset(key, self.listener_name, f"{count} {now:.3f}")
                        pipe.expire(key, int(PRESENCE_STALE) * 2)
                    else:
                        pipe.hdel(key, self.listener_name)
                pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)

    def _presence_key(self, channel: str) -> str:
        return f"{self.prefix}:{{{channel}}}:presence"

    def sweep(self) -> None:
        """Keep the position of watched channels alive, as long as they have subscribers."""
        states = [self._keys(channel)[0] for channel in self._watches]
        if not states:
            return
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for state in states:
                    pipe.pexpire(state, self._ttl_ms)
                pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)

    def status(self) -> dict[str, object]:
        return {
            "broker": "redis",
            "ok": self._connected and self._commands_ok,
            "url": redact(self.url),
            "prefix": self.prefix,
            "listener": "connected" if self._connected else "disconnected",
            "watched": len(self._watches),
            "reconnects": max(0, self._connections - 1),
            "error": self._error,
        }

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            self._listener.kill(block=True, timeout=self.timeout)
            self._listener = None
        self._redis.connection_pool.disconnect()

    # -- commands -----------------------------------------------------------------------

    def _keys(self, channel: str) -> tuple[str, str, str]:
        base = f"{self.prefix}:{{{channel}}}"
        return f"{base}:state", f"{base}:log", base

    def _call(self, script, keys: list[str], args: list) -> list:
        try:
            result = script(keys, [self._last_epoch + 1, self._ttl_ms, *args])
        except redis.RedisError as exc:
            self._failed(exc)
            raise BrokerUnavailable("the message broker is unavailable") from exc
        self._commands_ok = True
        self._last_epoch = max(self._last_epoch, result[0])
        return result

    def _read(self, channel: str, since: MessageId | None) -> History:
        state, log_key, _ = self._keys(channel)
        cursor = ["", ""] if since is None else [since.epoch, since.seq]
        epoch, seq, first, after, origin = self._call(
            self._read_script, [state, log_key, self._origin_key], cursor
        )
        retained = [_decode(channel, fields[-1]) for _, fields in after]
        if first and (not after or first[0][0] != after[0][0]):
            retained.insert(0, _decode(channel, first[0][1][-1]))
        return read_after(retained, epoch, seq, since, ttl_ms=self._ttl_ms, origin=origin)

    def _failed(self, exc: Exception) -> None:
        self.errors += 1
        if self._commands_ok:
            log.warning("redis command failed: %s", exc)
        self._commands_ok = False
        self._error = f"{type(exc).__name__}: {exc}"

    # -- the listener -------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = gevent.spawn(self._listen)

    def _send(self, command: str, watch: _Watch) -> None:
        """SUBSCRIBE/UNSUBSCRIBE now if connected; else the listener subscribes on connect."""
        with self._send_lock:
            conn = self._conn
            if conn is None:
                return
            self._acks.append((watch.key, watch if command == "SUBSCRIBE" else None))
            try:
                conn.send_command(command, watch.key)
            except redis.RedisError as exc:
                log.debug("%s %s failed: %s", command, watch.channel, exc)
                self._conn = None  # the listener notices and starts over

    def _listen(self) -> None:
        """Connect, subscribe, read; on any failure start over after a jittered backoff."""
        least, most = self.backoff
        delay = least
        pool = self._redis.connection_pool
        while not self._closed:
            conn = pool.connection_class(**{
                **pool.connection_kwargs, "client_name": self.listener_name, "protocol": 2,
            })
            began = time.monotonic()
            try:
                conn.connect()
                with self._send_lock:
                    watches = list(self._watches.values())
                    if watches:
                        self._acks.extend((watch.key, watch) for watch in watches)
                        conn.send_command("SUBSCRIBE", *(watch.key for watch in watches))
                    self._conn = conn
                if self._connections:
                    log.info("redis listener connected again")
                self._connections += 1
                self._connected, self._commands_ok, self._error = True, True, None
                self._read_replies(conn)
            except (redis.RedisError, BrokerUnavailable) as exc:
                if self._connected or self._error is None:
                    log.warning("redis listener disconnected: %s", exc)
                self._error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug must not end delivery for good
                log.exception("redis listener failed")
                self._error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._send_lock:
                    self._conn = None
                    self._acks.clear()
                self._connected = False
                for watch in self._watches.values():
                    watch.subscribed.clear()
                with contextlib.suppress(Exception):
                    conn.disconnect()
            if time.monotonic() - began > most:
                delay = least
            gevent.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, most)

    def _read_replies(self, conn: redis.connection.AbstractConnection) -> None:
        pinged = False
        while True:
            # Never let redis-py reconnect this connection quietly, without subscriptions.
            if self._conn is not conn:
                raise redis.ConnectionError("sending to Redis failed")
            if not conn.can_read(timeout=self.heartbeat):
                if pinged:
                    raise redis.TimeoutError("no answer to PING")
                with self._send_lock:
                    if self._conn is conn:
                        conn.send_command("PING")
                pinged = True
                continue
            reply = conn.read_response()
            pinged = False
            if not isinstance(reply, list):  # PONG outside subscribed mode
                continue
            kind = reply[0]
            if kind == b"message":
                watch = self._by_key.get(reply[1])
                if watch is not None:
                    self._hand_over(watch, _decode(watch.channel, reply[2]))
            elif kind in (b"subscribe", b"unsubscribe") and self._acks:
                key, watch = self._acks.popleft()
                if key != reply[1]:
                    raise redis.ConnectionError(f"unexpected {kind!r} {reply[1]!r}")
                if watch is not None and self._watches.get(watch.channel) is watch:
                    self._subscribed(watch)

    def _subscribed(self, watch: _Watch) -> None:
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

    def _hand_over(self, watch: _Watch, message: Message) -> None:
        """Give a message to the hub once: drop ids at or below the last one delivered."""
        last = watch.delivered
        if last is not None and message.id.epoch == last.epoch and message.id.seq <= last.seq:
            return
        if self._deliver is not None:
            try:
                self._deliver(message)
            except Exception:
                log.exception("delivering %s on %s failed", message.id, message.channel)
        self._delivered(watch, message.id)

    @staticmethod
    def _delivered(watch: _Watch, position: MessageId) -> None:
        """Everything up to ``position`` was handed over: wake the readers waiting for it."""
        watch.delivered = position
        for cursor, arrived in watch.readers:
            if _reached(position, cursor):
                arrived.set()


def _reached(delivered: MessageId | None, cursor: MessageId) -> bool:
    """Whether live delivery has passed ``cursor`` (a cursor before any message always has)."""
    return cursor.seq == 0 or (delivered is not None and delivered >= cursor)
