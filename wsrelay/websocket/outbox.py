"""The bytes waiting to be written to one socket: bounded, and written in large pieces."""

from __future__ import annotations

from collections import deque

#: How much one write takes at most; frames are joined up to this size.
WRITE_SIZE = 256 * 1024


class Outbox:
    """Whole frames queued for one socket, and how much of the first was written.

    Joining queued frames into one write is what makes fan-out cheap: one
    system call per socket per batch instead of one per message. Chunks are
    joined only while none is partly written, so each begins and ends on a
    frame boundary, and dropping every chunk that has not started leaves a
    valid stream.

    Pongs wait apart, and go out at the next frame boundary in a write of
    their own, ahead of the frames not yet begun: a client's pings are
    answered however much data is queued for it. Pongs not yet begun are
    replaced by newer ones, so a client that pings and never reads costs one
    batch of pongs, not a queue, and never gets an older pong after a newer.

    An empty outbox holds no queue (a deque is 600 bytes: most of an idle
    connection's outbox): it is made by the first frame and dropped once all
    was written.
    """

    __slots__ = ("_chunks", "_offset", "_pong_head", "_pongs", "limit", "size")

    def __init__(self, limit: int) -> None:
        self._chunks: deque[bytes] | None = None
        self._offset = 0
        self._pongs = b""  # pongs waiting for the next frame boundary
        self._pong_head = False  # True while the first chunk is pongs, alone
        self.size = 0
        self.limit = limit

    def __bool__(self) -> bool:
        return self.size > 0

    def push(self, frame: bytes) -> bool:
        """Queue a frame; return False when the outbox is now over its limit."""
        chunks = self._chunks  # once per message per subscriber: no call to _queue here
        if chunks is None:
            chunks = self._chunks = deque()
        chunks.append(frame)
        size = self.size = self.size + len(frame)
        return size <= self.limit

    def push_pongs(self, pongs: bytes) -> bool:
        """Queue pong frames ahead of every frame not yet begun, in place of the pongs still
        waiting (RFC 6455 5.5.3: only the answer to the latest ping is due); return False
        when the outbox is now over its limit."""
        if self._pong_head and not self._offset:  # peeked, but the socket took none of them
            self.size -= len(self._queue().popleft())
            self._pong_head = False
        self.size += len(pongs) - len(self._pongs)
        self._pongs = pongs
        return self.size <= self.limit

    def peek(self) -> bytes | memoryview:
        """The next bytes to write: the unwritten rest of the queue, up to :data:`WRITE_SIZE`."""
        chunks = self._chunks
        if self._offset and chunks:  # the rest of a partly written chunk goes out alone
            return memoryview(chunks[0])[self._offset :]
        if not self._pong_head:  # else the pongs go out alone
            if self._pongs:  # at a frame boundary: the pongs first
                chunks = self._queue()
                chunks.appendleft(self._pongs)
                self._pongs = b""
                self._pong_head = True
            elif chunks is not None and len(chunks) > 1:
                if self.size > WRITE_SIZE:
                    self._join_head(chunks)
                else:  # the usual case: all of it, joined in C
                    joined = b"".join(chunks)
                    chunks.clear()
                    chunks.append(joined)
                    return joined
        return chunks[0] if chunks else b""

    def _queue(self) -> deque[bytes]:
        chunks = self._chunks
        if chunks is None:
            chunks = self._chunks = deque()
        return chunks

    def _join_head(self, chunks: deque[bytes]) -> None:
        """Join the first chunks into one, up to :data:`WRITE_SIZE` (the queue holds more)."""
        parts = [chunks.popleft()]
        total = len(parts[0])
        while chunks and total + len(chunks[0]) <= WRITE_SIZE:
            total += len(chunks[0])
            parts.append(chunks.popleft())
        chunks.appendleft(b"".join(parts))

    def consume(self, written: int) -> None:
        """Forget ``written`` bytes that reached the socket."""
        if written == self.size:  # all of it, the usual case (waiting pongs count in size)
            self._chunks = None
            self._offset = 0
            self._pong_head = False
            self.size = 0
            return
        self.size -= written
        chunks = self._chunks
        offset = self._offset + written
        while chunks and offset >= len(chunks[0]):
            offset -= len(chunks.popleft())
            self._pong_head = False
        self._offset = offset
        if not chunks:
            self._chunks = None

    def drop_unstarted(self) -> None:
        """Drop every frame not yet begun; keep the rest of a partly written one."""
        self._pongs = b""
        chunks = self._chunks
        if self._offset and chunks:
            head = chunks[0]
            chunks.clear()
            chunks.append(head)
            self.size = len(head) - self._offset
        else:
            self._chunks = None
            self._offset = 0
            self._pong_head = False
            self.size = 0
