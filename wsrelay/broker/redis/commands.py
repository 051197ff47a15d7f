"""The Redis broker's one command connection per worker: auto-pipelining over a socket.

Every command of the worker (publishes from every connection, view and
background task, history reads, presence) goes into one
:class:`~.pipeline.CommandPipeline`. One greenlet owns the connection: it
sends everything queued as one write, reads until every reply of that round
trip came back, and meanwhile the next commands queue up, to go out together
in the next write. A flood of publishes thus costs a round trip per batch,
not per message; and since one connection carries them in queue order, the
order of each channel and of each publisher is kept.

Paced: a round trip less than ``send_delay`` after the previous one waits until that
much time has passed, gathering what queues meanwhile into the same write (the rule
of :mod:`wsrelay.pacing`, applied to Redis). A steady stream of publishes thus
costs a round trip, a script call and one wake-up of each worker's listener per
window rather than per message, for each of which a worker pays a system call and a
switch of processes, as many as the Python that handles the message; a command after
a quiet spell goes at once, and so does a full batch (:data:`FULL_BATCH` queued: a
flood gains nothing by waiting, and a publisher's publishes in flight are bounded, so
waiting would only cap its rate).

Bounded: at most ``max_pending`` commands wait at once; a caller past that
waits for room (up to ``timeout``), which slows whoever floods instead of
buffering without limit.

Faults: a connection that fails, or stays silent for ``timeout`` with
replies owed (a watchdog greenlet tells: a timeout on the socket would start
and stop a timer on every read), fails every command in flight and queued with
:class:`BrokerUnavailable` (none is retried: a publish retried could be
stored twice); the next command connects again. An answer saying Redis no
longer takes writes (``READONLY``: a master turned replica in a failover)
drops the connection too, so the next one finds the new master. The
connection is made by redis-py (URL, TLS, AUTH, SELECT, client name, the
master's address from Sentinel), the bytes are this module's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis
from gevent.event import Event

from ...pacing import write_at
from ..base import BrokerUnavailable
from .pipeline import Arg, CommandPipeline, ProtocolError, Reply
from .sockets import receive_into, send_all

log = logging.getLogger(__name__)

#: What one read takes at most, into a buffer kept for the connection: ``recv`` of a new
#: 256 KiB bytes object costs some 20 µs more than the read itself, on every round trip.
READ_SIZE = 256 * 1024
#: Seconds a busy connection gathers commands before its next round trip (see above).
SEND_DELAY = 0.005
#: Publishes (or other commands) queued that go at once, whatever the send delay.
FULL_BATCH = 64


class AutoPipeline:
    """Commands of every caller of a worker, sent together while the previous batch is out.

    ``on_connect(connection)`` may talk to a new connection (through
    redis-py, before anything is pipelined) and returns the commands that
    start it (loading the scripts); their replies are not awaited by anyone,
    an error among them shows in the commands that follow. ``on_error`` is
    told each failure.
    """

    def __init__(
        self, pool: redis.ConnectionPool, *, name: str, timeout: float, max_pending: int,
        on_connect: Callable[[redis.connection.AbstractConnection], list[tuple[Arg, ...]]],
        on_error: Callable[[Exception], None], send_delay: float = SEND_DELAY,
    ) -> None:
        self._pool = pool
        self.name = name
        self.timeout = timeout
        self.max_pending = max_pending
        self.send_delay = send_delay
        #: When the last round trip was sent (``time.monotonic()``; 0.0 before the first).
        self._sent = 0.0
        self._on_connect = on_connect
        self._on_error = on_error
        self._pipeline = CommandPipeline()
        self._work = Event()
        self._room = Event()
        self._room.set()
        self._greenlet: gevent.Greenlet | None = None
        self._conn: redis.connection.AbstractConnection | None = None
        self._buffer = bytearray(READ_SIZE)
        #: When Redis was last heard from (or, with nothing owed, sent to), and whether the
        #: watchdog shut the connection down for its silence.
        self._heard = 0.0
        self._silent = False
        self._closed = False
        #: Round trips so far, and commands they carried (the batching, as numbers).
        self.round_trips = 0
        self.commands = 0

    def submit(self, *args: Arg) -> Reply:
        """Queue a command; wait for room first when ``max_pending`` are waiting."""
        self._wait_for_room()
        return self.submit_now(*args)

    def extend(self, reply: Reply, *args: Arg) -> bool:
        """Add a part to the queued command of ``reply`` if it is still the last one queued
        (see :meth:`CommandPipeline.extend`), after waiting for room like :meth:`submit`."""
        self._wait_for_room()
        return self._pipeline.extend(reply, *args)

    def _wait_for_room(self) -> None:
        if self._closed:
            raise BrokerUnavailable("the message broker is closed")
        while len(self._pipeline) >= self.max_pending:
            self._room.clear()
            if not self._room.wait(self.timeout):
                raise BrokerUnavailable("the message broker is unavailable (too many waiting)")

    def submit_now(self, *args: Arg) -> Reply:
        """Queue a command whatever the bound (for a reply's callback, which must not wait)."""
        reply = self._pipeline.submit(*args)
        self._work.set()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        return reply

    def call(self, *args: Arg) -> Any:
        """Send a command and wait for its answer; raise :class:`BrokerUnavailable` on an error."""
        return wait(self.submit(*args), self.timeout)

    def close(self) -> None:
        self._closed = True
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=self.timeout)
            self._greenlet = None
        self._lost(BrokerUnavailable("the message broker is closed"))

    def _run(self) -> None:
        pipeline = self._pipeline
        while not self._closed:
            self._work.wait()
            self._work.clear()
            if not len(pipeline):
                continue
            try:
                conn = self._conn or self._connect()
                self._exchange(conn._sock)
            except (OSError, redis.RedisError, ProtocolError) as exc:
                silent = redis.TimeoutError(f"Redis owed answers for {self.timeout} s")
                self._lost(silent if self._silent else exc)  # silent: the watchdog shut it
            except Exception as exc:  # a bug must not leave callers waiting for good
                log.exception("redis command connection failed")
                self._lost(exc)

    def _connect(self) -> redis.connection.AbstractConnection:
        pool = self._pool
        conn = pool.connection_class(**{
            **pool.connection_kwargs, "client_name": self.name, "protocol": 2,
        })
        conn.connect()
        self._conn = conn
        self._pipeline.put_first(self._on_connect(conn))
        # Silence is told by the watchdog: a timeout on the socket starts a timer per read.
        sock = conn._sock
        if sock is None:
            raise redis.ConnectionError("not connected")
        sock.settimeout(None)
        self._heard, self._silent = time.monotonic(), False
        gevent.spawn(self._watch, conn, sock)
        return conn

    def _watch(self, conn: redis.connection.AbstractConnection, sock: socket.socket) -> None:
        """Shut the connection down once Redis owed answers for ``timeout`` seconds without a
        word: the read in progress fails, and everything in flight with it."""
        while self._conn is conn:
            gevent.sleep(self.timeout / 4)
            if (self._conn is conn and self._pipeline.in_flight
                    and time.monotonic() - self._heard > self.timeout):
                self._silent = True
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return

    def _exchange(self, sock: Any) -> None:
        """Round trips until nothing is left: send all that queued, read all it is owed."""
        pipeline, buffer = self._pipeline, self._buffer
        while len(pipeline):
            now = time.monotonic()
            due = now if len(pipeline) >= FULL_BATCH else write_at(self._sent, now,
                                                                   self.send_delay)
            if due > now:  # the last round trip was moments ago: gather until its window ends
                gevent.sleep(due - now)
            data = pipeline.outgoing()
            if data:
                self._sent = self._heard = time.monotonic()  # owed from now on
                send_all(sock, data)
                self.round_trips += 1
            while pipeline.in_flight:
                size = receive_into(sock, buffer)
                if not size:
                    raise redis.ConnectionError("Redis closed the connection")
                self._heard = time.monotonic()
                self.commands += pipeline.receive(buffer, size)
                if len(pipeline) < self.max_pending:
                    self._room.set()
                if pipeline.stale:
                    raise redis.ConnectionError("Redis is no longer the master")

    def _lost(self, exc: Exception) -> None:
        """Drop the connection; everything waiting gets :class:`BrokerUnavailable`."""
        conn, self._conn = self._conn, None
        self._silent = False
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()
        error = exc if isinstance(exc, BrokerUnavailable) else BrokerUnavailable(
            f"the message broker is unavailable ({type(exc).__name__}: {exc})"
        )
        if self._pipeline.fail(error) and not isinstance(exc, BrokerUnavailable):
            self._on_error(exc)
        self._room.set()


def wait(reply: Reply, timeout: float) -> Any:
    """The reply's value once it came; its error (or none in time) as BrokerUnavailable.

    The connection's own timeout resolves every reply; ``timeout`` here is a
    last resort beyond it (connecting, then the round trip).
    """
    if not reply.done:
        arrived = Event()
        reply.callback = lambda _: arrived.set()
        if not arrived.wait(3 * timeout) and not reply.done:
            raise BrokerUnavailable("the message broker is unavailable (no answer)")
    if reply.error is not None:
        if isinstance(reply.error, BrokerUnavailable):
            raise reply.error
        raise BrokerUnavailable(f"the message broker failed: {reply.error}") from reply.error
    return reply.value
