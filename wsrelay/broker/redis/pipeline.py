"""Auto-pipelining without sockets: commands queue, go out together, answers come back in order.

:class:`CommandPipeline` is Sans-I/O (like :mod:`wsrelay.websocket.protocol`):
callers :meth:`~CommandPipeline.submit` commands and get a :class:`Reply`
each; whoever owns the connection takes every command queued so far as one
block of bytes (:meth:`~CommandPipeline.outgoing`), sends it, and feeds
what the connection reads back (:meth:`~CommandPipeline.receive`). Redis
answers a connection's commands in the order it received them, so the n-th
reply belongs to the n-th command sent: each :class:`Reply` is resolved with
its own answer, an error reply included, and its neighbours are unaffected.

A command still queued may grow (:meth:`~CommandPipeline.extend`): the
broker adds the publishes that queue behind a publish of the same channel to
its command, so a flood becomes one script call per round trip, not one per
message. Such a command counts once per part in :func:`len`, which is what
bounds the waiting work.

The encoding and the parsing are hiredis's (``pack_command`` and ``Reader``,
installed with ``redis[hiredis]``): a parser that is fed bytes, which is what
makes this object testable without a socket.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis

log = logging.getLogger(__name__)

#: Errors that mean the connection is to a server that no longer is the master.
NOT_MASTER = ("READONLY", "MASTERDOWN")
#: A command's words: bytes, str, int or float, as hiredis packs them.
Arg = bytes | str | int | float


def _pack(args: list[Arg]) -> bytes:
    """A command in RESP (hiredis's stub declares a one-word tuple: it takes any number)."""
    return hiredis.pack_command(tuple(args))  # type: ignore[arg-type]


class ReplyError(Exception):
    """Redis answered this command with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


class Reply:
    """The answer to one command, once it came: a value, or the error it was given.

    ``callback`` (set by the caller before the answer can come, i.e. before the
    owner of the connection runs again) is called once, with the reply, when it
    is resolved.
    """

    __slots__ = ("callback", "done", "error", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self.error: Exception | None = None
        self.callback: Callable[[Reply], None] | None = None

    def resolve(self, value: Any, error: Exception | None) -> None:
        self.value, self.error, self.done = value, error, True
        if self.callback is not None:
            try:
                self.callback(self)
            except Exception:  # one caller's bug must not cost the others their answers
                log.exception("a redis reply's callback failed")


class CommandPipeline:
    """Commands waiting to be sent, commands awaiting their replies, and the reply parser."""

    def __init__(self) -> None:
        #: Queued: each command's words (packed when sent, so the last may still grow), its
        #: reply and its weight (how many parts it carries: 1, or the publishes it joins).
        self._queued: list[tuple[list[Arg], Reply, int]] = []
        self._awaiting: deque[tuple[Reply, int]] = deque()
        self._waiting = 0
        self._reader = hiredis.Reader(replyError=ReplyError)
        #: True once Redis answered that it no longer takes writes (a master turned replica
        #: in a failover): the connection should be dropped and made again.
        self.stale = False

    def __len__(self) -> int:
        """Parts not yet answered, queued plus in flight (a command counts as its weight)."""
        return self._waiting

    @property
    def queued(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._awaiting)

    def submit(self, *args: Arg) -> Reply:
        """Queue a command; its reply is resolved once its answer was received."""
        reply = Reply()
        self._queued.append((list(args), reply, 1))
        self._waiting += 1
        return reply

    def extend(self, reply: Reply, *args: Arg) -> bool:
        """Add words to the last queued command, if ``reply`` is still its reply (it was
        not sent, and nothing was queued after it): one more part of it. False otherwise."""
        queued = self._queued
        if not queued or queued[-1][1] is not reply:
            return False
        words, _, weight = queued[-1]
        words.extend(args)
        queued[-1] = (words, reply, weight + 1)
        self._waiting += 1
        return True

    def put_first(self, commands: list[tuple[Arg, ...]]) -> None:
        """Queue commands ahead of every queued one, their replies awaited by nobody (what
        starts a connection)."""
        self._queued[:0] = [(list(args), Reply(), 1) for args in commands]
        self._waiting += len(commands)

    def outgoing(self) -> bytes:
        """Every queued command as one block to send; they count as in flight from now on."""
        queued, self._queued = self._queued, []
        self._awaiting.extend((reply, weight) for _, reply, weight in queued)
        return b"".join([_pack(words) for words, _, _ in queued])

    def receive(self, data: bytes | bytearray, size: int | None = None) -> int:
        """Feed bytes read from the connection (the first ``size`` of ``data``: a buffer
        read into); resolve the replies they complete, in order.

        Returns how many were resolved. A reply with nobody awaiting it means
        the connection is out of step: :class:`ProtocolError`.
        """
        reader = self._reader
        # hiredis reads any buffer (its stub names only str and bytes)
        reader.feed(data, 0, len(data) if size is None else size)  # type: ignore[arg-type]
        resolved = 0
        while True:
            answer = reader.gets()
            if answer is False:
                return resolved
            if not self._awaiting:
                raise ProtocolError(f"a reply nobody asked for: {answer!r}")
            reply, weight = self._awaiting.popleft()
            self._waiting -= weight
            if isinstance(answer, ReplyError):
                if str(answer).startswith(NOT_MASTER):
                    self.stale = True
                reply.resolve(None, answer)
            else:
                reply.resolve(answer, None)
            resolved += 1

    def fail(self, error: Exception) -> int:
        """The connection is lost: every command in flight and queued gets ``error``.

        Afterwards the pipeline is ready for a new connection (the parser starts
        afresh). Returns how many commands failed.
        """
        failed = [reply for reply, _ in self._awaiting] + [reply for _, reply, _ in self._queued]
        self._awaiting.clear()
        self._queued = []
        self._waiting = 0
        self._reader = hiredis.Reader(replyError=ReplyError)
        self.stale = False
        for reply in failed:
            reply.resolve(None, error)
        return len(failed)


class ProtocolError(Exception):
    """The connection's replies do not match its commands: it must be dropped."""
