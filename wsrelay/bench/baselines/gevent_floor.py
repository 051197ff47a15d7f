"""The floor of the stack: gevent doing the least a connect or a long-poll needs, no relay.

A baseline for what wsrelay's own work costs on top of gevent's. It speaks just
enough of wsrelay's wire for the bench's ``idle`` and ``poll`` scenarios: it
reads a request head, answers an upgrade with a 101 (the accept key computed,
nothing checked) and holds the socket; a ``/poll`` request waits for the next
message and gets an answer built once per cursor range, shared by every
waiter; the publisher's WebSocket frames (``?echo=0``) become messages. No
Host, origin, token or limit check, no routing, no logging, no timeouts.

Two ways of serving, both on gevent's loop:

- ``greenlets`` (the default): gevent's ``StreamServer``, a greenlet per
  accepted connection. This is how gevent's pywsgi, and so gevent-websocket's
  gunicorn worker and ``manage.py serve``, serve every connection.
- ``callbacks``: no greenlet at all: the listening socket and every connection
  are read in libev io-watcher callbacks, held polls answered from the
  publisher's callback. The least gevent's loop can do.

Usage: ``python -m wsrelay.bench.baselines.gevent_floor PORT [greenlets|callbacks]``.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import json
import socket
import sys
from collections.abc import Callable

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ACCEPT_BACKLOG = 2048


def switching_protocols(head: bytes) -> bytes:
    """The 101 for an upgrade request's head (its last line ends without CRLF)."""
    head += b"\r\n"
    start = head.lower().find(b"sec-websocket-key:") + len(b"sec-websocket-key:")
    key = head[start:head.find(b"\r\n", start)].strip()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def client_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The payloads of the whole masked frames at the start of ``buffer``, and the rest."""
    payloads = []
    while len(buffer) >= 2:
        size, start = buffer[1] & 127, 2
        if size == 126:
            size, start = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            size, start = int.from_bytes(buffer[2:10], "big"), 10
        end = start + 4 + size
        if len(buffer) < end:
            break
        mask = buffer[start : start + 4] * (size // 4 + 1)
        masked = int.from_bytes(buffer[start + 4 : end], "big")
        payloads.append((masked ^ int.from_bytes(mask[:size], "big")).to_bytes(size, "big"))
        buffer = buffer[end:]
    return payloads, buffer


class Channel:
    """One channel's messages, and the long-poll answers built from them."""

    def __init__(self) -> None:
        self.history: list[bytes] = []
        self._answers: dict[int, bytes] = {}

    def cursor(self, target: bytes) -> int:
        """The cursor of a poll request's target: its ``since``, else the head."""
        _, found, since = target.partition(b"since=")
        return int(since.split(b"&", 1)[0]) if found else len(self.history)

    def publish(self, message: bytes) -> None:
        self.history.append(message)
        self._answers.clear()

    def answer(self, since: int) -> bytes:
        """The answer to a poll from ``since`` (behind the head), built once per cursor."""
        if since not in self._answers:
            head = len(self.history)
            messages = [{"data": message.decode()} for message in self.history[since:]]
            body = json.dumps({"messages": messages, "cursor": str(head)}).encode()
            self._answers[since] = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        return self._answers[since]


def split_head(buffer: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(head, its request target, the bytes after it) once ``buffer`` holds a whole head."""
    head, found, rest = buffer.partition(b"\r\n\r\n")
    return (head, head.split(b" ", 2)[1], rest) if found else None


def is_upgrade(head: bytes) -> bool:
    return b"upgrade: websocket" in head.lower()


def is_publisher(target: bytes) -> bool:
    return b"echo=0" in target


def serve_greenlets(listener: socket.socket, channel: Channel) -> None:
    from gevent.event import Event
    from gevent.server import StreamServer

    arrived = Event()

    def publish(message: bytes) -> None:
        nonlocal arrived
        channel.publish(message)
        done, arrived = arrived, Event()
        done.set()

    def handle(sock: socket.socket, _address: object) -> None:
        buffer = b""
        while True:
            while (parts := split_head(buffer)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            head, target, buffer = parts
            if is_upgrade(head):
                sock.sendall(switching_protocols(head))
                if not is_publisher(target):
                    # held with no greenlet, as wsrelay holds an idle WebSocket: the server
                    # closes the socket object when this returns, not a detached descriptor
                    held.append(sock.detach())
                    return
                while True:
                    messages, buffer = client_frames(buffer)
                    for message in messages:
                        publish(message)
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
            since = channel.cursor(target)
            while since >= len(channel.history):
                arrived.wait()
            sock.sendall(channel.answer(since))

    held: list[int] = []
    StreamServer(listener, handle).serve_forever()


def serve_callbacks(listener: socket.socket, channel: Channel) -> None:
    from gevent import get_hub

    hub = get_hub()
    waiting: list[tuple[socket.socket, int]] = []

    def publish(message: bytes) -> None:
        channel.publish(message)
        answered = waiting[:]
        waiting.clear()
        for sock, since in answered:
            sock.send(channel.answer(since))

    def watch(sock: socket.socket) -> None:
        watcher = hub.loop.io(sock.fileno(), 1)
        buffer = b""
        upgraded = False

        def readable() -> None:
            nonlocal buffer, upgraded
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                return
            if not chunk:
                watcher.stop()
                del connections[sock]
                sock.close()
                return
            buffer += chunk
            while not upgraded and (parts := split_head(buffer)) is not None:
                head, target, buffer = parts
                if is_upgrade(head):
                    sock.send(switching_protocols(head))
                    upgraded = True
                    if not is_publisher(target):
                        watcher.stop()  # held, as idle
                        return
                    break
                since = channel.cursor(target)
                if since < len(channel.history):
                    sock.send(channel.answer(since))
                else:
                    waiting.append((sock, since))
            if upgraded:
                messages, buffer = client_frames(buffer)
                for message in messages:
                    publish(message)

        watcher.start(readable)
        connections[sock] = watcher

    def accept() -> None:
        for _ in range(100):
            try:
                sock, _address = listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            watch(sock)

    connections: dict[socket.socket, object] = {}
    listener.setblocking(False)
    hub.loop.io(listener.fileno(), 1).start(accept)
    hub.join()


SERVE: dict[str, Callable[[socket.socket, Channel], None]] = {
    "greenlets": serve_greenlets, "callbacks": serve_callbacks,
}


def main(argv: list[str]) -> None:
    mode = argv[1] if len(argv) > 1 else "greenlets"
    if mode == "greenlets":
        from gevent import monkey

        monkey.patch_all()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", int(argv[0])))
    listener.listen(ACCEPT_BACKLOG)
    gc.freeze()
    SERVE[mode](listener, Channel())


if __name__ == "__main__":
    main(sys.argv[1:])
