"""Reading and writing the broker's connections with as few system calls as possible.

On a steady stream every message wakes a worker's pub/sub connection, and every
publish is a round trip of its command connection; a system call costs about
as much as the Python that handles the message. gevent's ``recv_into`` tries
the read first and only waits after it failed, so each wake-up cost a read that
found nothing; ``sendall`` asks the kernel for the send buffer's size before
every send. Here a plain socket waits until it is readable, then reads once,
and a send is ``send`` until all is out.

A TLS socket reads as gevent does: bytes already decrypted may wait inside it,
with nothing left to read on the socket itself.
"""

from __future__ import annotations

from typing import Any

import gevent.socket

#: gevent's own socket (TCP or Unix), not one wrapped in TLS.
PLAIN = gevent.socket.socket


def receive_into(sock: Any, buffer: bytearray) -> int:
    """Read what has arrived into ``buffer``, waiting for it first; the size read (0: the
    connection was closed, or shut down by a watchdog)."""
    if type(sock) is not PLAIN:
        return int(sock.recv_into(buffer))
    own: Any = sock  # gevent's own parts: the wait, its read watcher, the socket it wraps
    wait, readable, raw = own._wait, own._read_event, own._sock
    while True:
        wait(readable)
        try:
            return int(raw.recv_into(buffer))
        except BlockingIOError:  # woken, yet nothing to read after all
            continue


def send_all(sock: Any, data: bytes) -> None:
    """Send all of ``data`` (gevent's ``send`` waits while the send buffer is full)."""
    sent = sock.send(data)
    if sent < len(data):
        view = memoryview(data)
        while sent < len(data):
            sent += sock.send(view[sent:])
