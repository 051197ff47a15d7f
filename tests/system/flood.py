"""A hostile client flooding one WebSocket at full speed, run as a process of its own.

``python -m tests.system.flood PORT PATH KIND SECONDS [BYTES]`` connects, sends frames
of one ``KIND`` (see :data:`FLOODS`) as fast as the socket takes them for
``SECONDS``, or until it has sent ``BYTES``, or until the server closes the
connection, never reading, and prints a
:class:`Report` as one JSON line: bytes sent, seconds flooded, and the code
and reason of the server's close frame. It runs in its own process so that
its busy loop never steals time from the test process, where the bystander
measures.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tests.support import (
    PYTHON,
    ROOT,
    client_frame,
    handshake_request,
    read_http_head,
    server_frames,
)

TEXT, BINARY, CONT, PING, PONG = 0x1, 0x2, 0x0, 0x9, 0xA
#: Frames are sent in blocks of about this size, built once.
BLOCK = 64 * 1024


def _repeat(frame: bytes) -> bytes:
    return frame * max(1, BLOCK // len(frame))


#: What the flood sends: (the frames that open it, the block sent over and over).
FLOODS: dict[str, Callable[[], tuple[bytes, bytes]]] = {
    "pong": lambda: (b"", _repeat(client_frame(PONG, b""))),
    "ping": lambda: (b"", _repeat(client_frame(PING, b"p" * 125))),  # the largest pongs
    # empty continuations of one message that never ends
    "continuation": lambda: (client_frame(TEXT, b"x", fin=False),
                             _repeat(client_frame(CONT, b"", fin=False))),
    "text": lambda: (b"", _repeat(client_frame(TEXT, b"flood"))),
    "big": lambda: (b"", client_frame(BINARY, os.urandom(1 << 20))),
}


@dataclass
class Report:
    sent: int  # bytes
    seconds: float  # until the time was up or the server closed the connection
    close_code: int | None  # of the server's close frame; None: the server never closed
    close_reason: str | None


def flood(port: int, path: str, kind: str, seconds: float, size: float = math.inf,
          source: str = "127.0.0.1") -> Report:
    """Flood from ``source`` (a loopback address: 127.0.0.1 is exempt from the per-IP
    limits by default, 127.0.0.2 and the others are not)."""
    opening, block = FLOODS[kind]()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it never reads anyway
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(handshake_request(path, port))
    status, received = read_http_head(sock)
    assert status == 101, status
    sent = 0
    start = time.monotonic()
    try:
        sock.sendall(opening)
        while time.monotonic() - start < seconds and sent < size:
            sock.sendall(block)
            sent += len(block)
        closed = False
    except OSError:  # the server closed the connection: what it sent says why
        closed = True
    flooded = time.monotonic() - start
    if closed:
        received += _read_to_end(sock)
    sock.close()
    close = next((payload for opcode, payload in server_frames(received) if opcode == 0x8),
                 None)
    return Report(
        sent=sent, seconds=round(flooded, 3),
        close_code=struct.unpack("!H", close[:2])[0] if close else None,
        close_reason=close[2:].decode("utf-8", "replace") if close else None,
    )


def _read_to_end(sock: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sent, until it closed the connection (or ``timeout``)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 20)
        except OSError:  # a timeout, or the reset that followed the close frame
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def start(
    port: int, path: str, kind: str, seconds: float, size: float = math.inf,
    source: str = "127.0.0.1",
) -> subprocess.Popen:
    """Start a flooder process; :func:`result` waits for its report."""
    return subprocess.Popen(
        [PYTHON, "-m", "tests.system.flood", str(port), path, kind, str(seconds), str(size),
         source],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )


def result(proc: subprocess.Popen, timeout: float = 60) -> Report:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"the flooder failed ({proc.returncode}): {out}"
    return Report(**json.loads(out))


if __name__ == "__main__":
    port, path, kind, seconds, size, source = sys.argv[1:]
    report = flood(int(port), path, kind, float(seconds), float(size), source)
    print(json.dumps(report.__dict__))
