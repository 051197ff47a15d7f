"""Helpers for tests: server processes, redis-server, raw WebSocket frames."""

from __future__ import annotations

import base64
import contextlib
import gc
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent
import greenlet
import requests
import websocket
from gevent.pywsgi import WSGIServer
from hypothesis import settings

from wsrelay import create_app
from wsrelay.server.handler import RelayHandler

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def publish(base: ServerProcess | str, channel: str, data: str | bytes) -> str:
    """POST /publish as any service would (``str`` as UTF-8 text, ``bytes`` as binary) on a
    server or a base URL; the server must accept it. Returns the message id."""
    url = base if isinstance(base, str) else base.url
    binary = isinstance(data, bytes)
    response = requests.post(
        f"{url}/publish/{channel}", data=data if binary else data.encode("utf-8"),
        headers={"Content-Type": "application/octet-stream" if binary
                 else "text/plain; charset=utf-8"},
        timeout=5,
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def untimed(items: list[dict]) -> list[dict]:
    """Message items (long-poll, SSE ``json`` events, wsrelay.v1 messages) without the
    ``time`` the broker stamps, for tests about the rest of them."""
    return [{key: value for key, value in item.items() if key != "time"} for item in items]


def poll_json(server: ServerProcess, channel: str, **params) -> dict:
    """GET /poll with ``params``; the answer must be a 200, whose JSON is returned."""
    wait = float(params.get("timeout", 25))
    response = requests.get(f"{server.url}/poll/{channel}", params=params, timeout=wait + 10)
    assert response.status_code == 200, response.text
    return response.json()


def publish_stream(server: ServerProcess, channel: str, count: int) -> gevent.Greenlet:
    """A greenlet publishing ``n0`` ... ``n{count-1}`` over one WebSocket, briefly pausing
    every fifth message so readers interleave (keep ``count`` within one connection's
    publish burst)."""

    def produce() -> None:
        with server.ws(f"/ws/{channel}?echo=0") as publisher:
            for i in range(count):
                publisher.send(f"n{i}")
                if i % 5 == 0:
                    gevent.sleep(0.003)

    return gevent.spawn(produce)


def examples(full: int) -> int:
    """The examples a property test draws: ``full`` under hypothesis's default profile, and
    in proportion under another (the inner loop's draws a tenth: see tests/conftest.py)."""
    return max(1, full * settings.default.max_examples // 100)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, message: str = ""):
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


class ServerProcess:
    """A wsrelay server running as its own process, as a user would start it."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: str) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    @classmethod
    def serve(cls, env: dict[str, str] | None = None, port: int | None = None,
              options: tuple[str, ...] = ()) -> ServerProcess:
        """``python manage.py serve [OPTIONS]`` on a free port."""
        port = port or free_port()
        args = [PYTHON, "manage.py", "serve", "--port", str(port), "--no-access-log", *options]
        return cls.start(args, port, env)

    @classmethod
    def gunicorn(
        cls, *extra: str, env: dict[str, str] | None = None, port: int | None = None
    ) -> ServerProcess:
        """``gunicorn -c gunicorn.conf.py`` on a free port."""
        port = port or free_port()
        args = [PYTHON, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}",
                *extra]
        return cls.start(args, port, env)

    @classmethod
    def start(cls, args: list[str], port: int, env: dict[str, str] | None) -> ServerProcess:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - kept for the process's life
            prefix="wsrelay-", suffix=".log", delete=False
        )
        proc = subprocess.Popen(
            args, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        server = cls(proc, port, log.name)
        server.wait_ready()
        return server

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:  # a 400 is a server that answers, but not to this Host (ALLOWED_HOSTS)
                return requests.get(self.url + "/healthz", timeout=1).status_code in (200, 400)
            except requests.RequestException:
                return False

        wait_until(ready, timeout, message=f"server not ready:\n{self.log()}")

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)

    def health(self) -> dict:
        return requests.get(self.url + "/healthz", timeout=5).json()

    def rss(self) -> int:
        """Resident memory of the server process in bytes (``manage.py serve`` only: under
        gunicorn ``proc`` is the arbiter, not a worker)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS in /proc/<pid>/status")

    def open_files(self) -> int:
        """File descriptors the server process holds: each socket it has not closed counts."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def ws(self, path: str, **kwargs) -> WSClient:
        """A real WebSocket client (the ``websocket-client`` library) on ``path``."""
        return WSClient(self.ws_url + path, **kwargs)


class Refused(Exception):
    """The server answered the handshake with an HTTP error."""

    def __init__(self, status: int, body: bytes, headers: dict) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body
        self.headers = headers


class Closed(Exception):
    """The server closed the WebSocket; ``code`` and ``reason`` of its close frame."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class WSClient:
    """A blocking WebSocket client with no threads, so it runs in a gevent-patched process."""

    def __init__(self, url: str, origin: str | None = None, timeout: float = 5,
                 subprotocols: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        try:
            self.conn = websocket.create_connection(
                url, timeout=timeout, origin=origin, subprotocols=subprotocols,
                suppress_origin=origin is None,
                header=[f"{name}: {value}" for name, value in (headers or {}).items()],
            )
        except websocket.WebSocketBadStatusException as exc:
            raise Refused(exc.status_code, exc.resp_body or b"", exc.resp_headers or {}) from None
        self.close_code: int | None = None
        self.close_reason = ""

    def __enter__(self) -> WSClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            self.conn.send(data)
        else:
            self.conn.send_binary(data)

    def recv(self, timeout: float = 5) -> str | bytes:
        """The next message; TimeoutError if none comes, Closed if the server closes."""
        self.conn.settimeout(timeout)
        try:
            opcode, data = self.conn.recv_data(control_frame=False)
        except websocket.WebSocketTimeoutException:
            raise TimeoutError from None
        except websocket.WebSocketConnectionClosedException:
            raise Closed(self.close_code, self.close_reason) from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            self.close_reason = data[2:].decode("utf-8", "replace")
            raise Closed(self.close_code, self.close_reason)
        return data.decode("utf-8") if opcode == websocket.ABNF.OPCODE_TEXT else data

    def ask(self, **request) -> dict:
        """Send a wsrelay.v1 request; its ``ack`` or ``error`` (other envelopes skipped)."""
        self.send(json.dumps(request))
        while True:
            answer = json.loads(self.recv())
            if answer["type"] in ("ack", "error"):
                return answer

    def envelope(self, kind: str, timeout: float = 5) -> dict:
        """The next wsrelay.v1 envelope of type ``kind`` (others skipped)."""
        while True:
            answer = json.loads(self.recv(timeout))
            if answer["type"] == kind:
                return answer

    def until_closed(self, most: int = 50) -> tuple[int | None, str]:
        """Read on until the server closes (within ``most`` messages): its code and reason."""
        try:
            for _ in range(most):
                self.recv()
        except Closed as closed:
            return closed.code, closed.reason
        raise AssertionError(f"still open after {most} messages")

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame and read the server's answer (kept in ``close_code``)."""
        if not self.conn.connected:
            return
        try:
            self.conn.send_close(code, reason.encode())
            self.conn.settimeout(5)
            while True:
                frame = self.conn.recv_frame()
                if frame is None or frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                    if frame is not None and len(frame.data) >= 2:
                        self.close_code = int.from_bytes(frame.data[:2], "big")
                        self.close_reason = frame.data[2:].decode("utf-8", "replace")
                    break
        except (websocket.WebSocketException, OSError):
            pass
        finally:
            self.conn.shutdown()


class RedisServer:
    """A real redis-server process on a free port, without persistence."""

    def __init__(self, proc: subprocess.Popen, port: int, directory: str) -> None:
        self.proc = proc
        self.port = port
        self.directory = directory
        self.url = f"redis://127.0.0.1:{port}/0"

    @classmethod
    def start(cls, port: int | None = None) -> RedisServer:
        port = port or free_port()
        directory = tempfile.mkdtemp(prefix="wsrelay-redis-")
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        server = cls(proc, port, directory)
        wait_until(server.ping, 10, message="redis-server did not start")
        return server

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port: every key and subscription is gone."""
        self.stop()
        fresh = RedisServer.start(self.port)
        self.proc = fresh.proc


class RedisClusterProcesses:
    """A real Redis Cluster: ``masters`` redis-servers with ``--cluster-enabled yes`` (and
    ``replicas`` replicas each), joined by ``redis-cli --cluster create``; every process
    stopped by :meth:`stop`. Node timeout 1 s, so a killed master's replica takes over soon."""

    def __init__(self, nodes: list[RedisServer]) -> None:
        self.nodes = nodes
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes[:2])

    @classmethod
    def start(cls, masters: int = 3, replicas: int = 0, *args: str) -> RedisClusterProcesses:
        """``args``: more options for every node."""
        nodes: list[RedisServer] = []
        try:
            for _ in range(masters * (1 + replicas)):
                port = free_port()
                directory = tempfile.mkdtemp(prefix="wsrelay-cluster-")
                proc = subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", directory, "--cluster-enabled", "yes",
                     "--cluster-node-timeout", "1000", "--cluster-port", str(free_port()),
                     "--cluster-config-file", f"{directory}/nodes.conf", *args],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                )
                nodes.append(RedisServer(proc, port, directory))
            for node in nodes:
                wait_until(node.ping, 10, message="redis-server did not start")
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                 "--cluster-replicas", str(replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )
            cluster = cls(nodes)
            wait_until(cluster.healthy, 30, 0.2, message="the cluster did not form")
            return cluster
        except BaseException:
            for node in nodes:
                node.stop()
            raise

    def cli(self, node: RedisServer, *args: str) -> str:
        """``redis-cli`` against one node; its output."""
        return subprocess.run(["redis-cli", "-p", str(node.port), *args], check=True,
                              capture_output=True, text=True, timeout=30).stdout

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and sees every live node's replicas in sync."""
        alive = [n for n in self.nodes if n.proc.poll() is None]
        try:
            return all("cluster_state:ok" in self.cli(n, "CLUSTER", "INFO") for n in alive)
        except subprocess.SubprocessError:
            return False

    def _nodes_lines(self) -> list[list[str]]:
        """``CLUSTER NODES`` as the first node that answers sees it, split into fields."""
        for node in self.nodes:
            with contextlib.suppress(subprocess.SubprocessError):
                return [line.split() for line in self.cli(node, "CLUSTER", "NODES").splitlines()]
        raise AssertionError("no node of the cluster answers")

    def _node(self, fields: list[str]) -> RedisServer:
        port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
        return next(n for n in self.nodes if n.port == port)

    def masters(self) -> dict[int, RedisServer]:
        """Each slot's master, as the first live node sees it."""
        owners: dict[int, RedisServer] = {}
        for fields in self._nodes_lines():
            if "master" in fields[2] and "fail" not in fields[2]:
                for part in fields[8:]:
                    low, _, high = part.partition("-")
                    if low.isdigit():
                        owners.update(dict.fromkeys(range(int(low), int(high or low) + 1),
                                                    self._node(fields)))
        return owners

    def owner(self, slot: int) -> RedisServer:
        """The live master that serves ``slot``."""
        return self.masters()[slot]

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A replica of ``master``."""
        master_id = self.node_id(master)
        return next(self._node(fields) for fields in self._nodes_lines()
                    if fields[3] == master_id and "fail" not in fields[2])

    def replicas_in_sync(self) -> bool:
        """Every live replica's link to its master is up."""
        replicas = [n for n in self.nodes if n.proc.poll() is None
                    and "role:slave" in self.cli(n, "INFO", "replication")]
        return all("master_link_status:up" in self.cli(n, "INFO", "replication")
                   for n in replicas)

    def move_slot(self, slot: int, target: RedisServer) -> None:
        """Migrate ``slot`` to ``target`` as ``redis-cli --cluster reshard`` does: IMPORTING
        and MIGRATING, MIGRATE its keys in batches, then SETSLOT NODE on every master."""
        source = self.owner(slot)
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        self.cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while keys := self.cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
            self.cli(source, "MIGRATE", "127.0.0.1", str(target.port), "", "0", "5000",
                     "KEYS", *keys)
        others = set(self.masters().values()) - {source, target}
        for node in [target, source, *others]:  # the target first, as redis-cli does
            self.cli(node, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)

    def failed(self, node: RedisServer) -> bool:
        """Whether the cluster marked ``node`` as failed."""
        port = f":{node.port}@"
        return any(port in fields[1] and "fail" in fields[2].split(",")
                   for fields in self._nodes_lines())

    def node_id(self, node: RedisServer) -> str:
        return self.cli(node, "CLUSTER", "MYID").strip()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# -- raw WebSocket, for what a polite client never sends ---------------------------------

def handshake_request(path: str, port: int, **headers: str) -> bytes:
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    for name, value in headers.items():
        key = name.replace("_", "-")
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_http_head(sock: socket.socket) -> tuple[int, bytes]:
    """Read a response head; return its status and any bytes that followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


@contextlib.contextmanager
def raw_websocket(port: int, path: str) -> Iterator[tuple[socket.socket, bytes]]:
    """An upgraded TCP socket, and bytes already read past the 101."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(handshake_request(path, port))
        status, rest = read_http_head(sock)
        assert status == 101, status
        yield sock, rest
    finally:
        sock.close()


def client_frame(
    opcode: int, data: bytes, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame built by hand (RFC 6455 5.2), valid or not, as a hostile client would."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | int(opcode)])
    length = len(data)
    mask_bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload); a truncated tail is left out.

    Fails on what a server must never send: a masked, fragmented or RSV-marked frame.
    """
    frames = []
    offset = 0
    while offset + 2 <= len(data):
        first, second = data[offset], data[offset + 1]
        assert first & 0xF0 == 0x80, f"a server frame with FIN and no RSV bits: {first:#04x}"
        assert not second & 0x80, "a server frame is not masked"
        opcode, length = first & 0x0F, second & 0x7F
        head = {126: 4, 127: 10}.get(length, 2)
        if offset + head > len(data):
            break
        if length == 126:
            (length,) = struct.unpack("!H", data[offset + 2 : offset + 4])
        elif length == 127:
            (length,) = struct.unpack("!Q", data[offset + 2 : offset + 10])
        if offset + head + length > len(data):
            break
        frames.append((opcode, data[offset + head : offset + head + length]))
        offset += head + length
    return frames


class FakeConnection:
    """The hub's view of a WebSocket connection, without a socket: it keeps its frames."""

    def __init__(self, name: str) -> None:
        self.id = name
        self.dirty = False
        self.written = 0.0
        self.sent = 0
        self.last_seen = time.monotonic()
        self.frames: list[bytes] = []
        self.flushes = 0
        self.pings = 0
        self.aborted = False

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)

    def flush(self) -> None:
        self.flushes += 1
        self.written = time.monotonic()

    def ping(self) -> None:
        self.pings += 1

    def close(self, code: int, reason: str) -> None:
        self.aborted = True

    def abort(self) -> None:
        self.aborted = True


# -- Server-Sent Events, read as a browser would -------------------------------------------

EOL = re.compile(rb"\r\n|\r|\n")


@dataclass
class Event:
    type: str
    data: str
    id: str


@dataclass
class Comment:
    text: str


class EventStream:
    """A minimal EventSource: the parsing rules of the HTML standard, over ``requests``."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.response = requests.get(
            url, headers={"Accept": "text/event-stream", **(headers or {})},
            stream=True, timeout=(5, 30),
        )
        self._chunks = self.response.iter_content(chunk_size=None)
        self._buffer = b""
        self._lines: list[bytes] = []
        self._type = ""
        self._data: list[str] = []
        self.last_event_id = ""
        self.retry: int | None = None
        self.comments: list[str] = []

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.response.close()

    def _line(self) -> bytes:
        while not self._lines:
            chunk = next(self._chunks)  # StopIteration: the server ended the stream
            self._buffer += chunk
            held = b""
            if self._buffer.endswith(b"\r"):  # may be the first half of a \r\n
                self._buffer, held = self._buffer[:-1], b"\r"
            parts = EOL.split(self._buffer)
            self._buffer = parts.pop() + held
            self._lines.extend(parts)
        return self._lines.pop(0)

    def next(self, timeout: float = 5) -> Event | Comment:
        """The next event or comment; fails the test if none comes within ``timeout``."""
        with gevent.Timeout(timeout, AssertionError(f"nothing from the stream in {timeout}s")):
            while True:
                line = self._line().decode("utf-8")
                if line == "":
                    if not self._data:
                        self._type = ""
                        continue
                    event = Event(self._type or "message", "\n".join(self._data),
                                  self.last_event_id)
                    self._type, self._data = "", []
                    return event
                if line.startswith(":"):
                    text = line[1:].removeprefix(" ")
                    self.comments.append(text)
                    return Comment(text)
                name, colon, value = line.partition(":")
                value = value.removeprefix(" ") if colon else ""
                if name == "event":
                    self._type = value
                elif name == "data":
                    self._data.append(value)
                elif name == "id" and "\0" not in value:
                    self.last_event_id = value
                elif name == "retry" and value.isdigit():
                    self.retry = int(value)

    def next_event(self, timeout: float = 5) -> Event:
        """The next event, skipping comments."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.next(max(0.01, deadline - time.monotonic()))
            if isinstance(item, Event):
                return item

    def events(self, count: int, timeout: float = 5) -> list[Event]:
        return [self.next_event(timeout) for _ in range(count)]

    def wait_connected(self, timeout: float = 5) -> None:
        """Once the server's ``connected`` comment is read, every later message is streamed."""
        while True:
            item = self.next(timeout)
            if isinstance(item, Comment) and item.text == "connected":
                return
            assert not isinstance(item, Event), item


# -- a bystander beside an attack ---------------------------------------------------------

class Bystander:
    """A client beside an attack: one WebSocket publishing a numbered message to ``channel``
    every ``interval`` seconds and receiving each back (raw mode echoes to the sender),
    recording each round trip, and what never came back.

    ``with Bystander(server, channel) as bystander: <attack>``, then
    ``bystander.assert_served()``.
    """

    def __init__(self, server: ServerProcess, channel: str, interval: float = 0.05) -> None:
        self.client = server.ws(f"/ws/{channel}")
        self.interval = interval
        self.sent: dict[int, float] = {}
        self.latencies: list[float] = []
        self._sending = True
        self._greenlets: list[gevent.Greenlet] = []

    def __enter__(self) -> Bystander:
        self._greenlets = [gevent.spawn(self._send), gevent.spawn(self._receive)]
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop sending, give the last messages up to 10 s to come back, close."""
        self._sending = False
        sender, receiver = self._greenlets
        sender.join(5)
        deadline = time.monotonic() + 10
        while (len(self.latencies) < len(self.sent) and not receiver.dead
               and time.monotonic() < deadline):
            gevent.sleep(0.05)
        gevent.killall(self._greenlets)
        self.client.close()

    def _send(self) -> None:
        n = 0
        while self._sending:
            self.sent[n] = time.monotonic()
            self.client.send(str(n))
            n += 1
            gevent.sleep(self.interval)

    def _receive(self) -> None:
        while True:
            n = int(self.client.recv(timeout=30))
            self.latencies.append(time.monotonic() - self.sent[n])

    @property
    def lost(self) -> int:
        return len(self.sent) - len(self.latencies)

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0

    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> str:
        return (f"bystander: sent {len(self.sent)}, lost {self.lost}, round trip "
                f"p50 {self.percentile(50) * 1000:.0f} ms, p99 {self.p99() * 1000:.0f} ms, "
                f"max {max(self.latencies, default=0) * 1000:.0f} ms")

    def assert_served(self, p99: float = 1.0) -> None:
        """Every message came back, 99 % of them within ``p99`` seconds."""
        assert self.sent, "the bystander sent nothing"
        assert self.lost == 0, self.summary()
        assert self.p99() < p99, self.summary()


def left_for_the_collector(run: Callable[[int], None], warm: int, count: int) -> set[str]:
    """The type names of what ``run(count)`` left for the cyclic garbage collector (objects
    that only a collection frees), after ``run(warm)`` warmed up whatever is made once."""
    run(warm)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run(count)
        gc.collect()
        return {type(obj).__name__ for obj in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def live_greenlets() -> int:
    """Greenlets alive in this process. ``type()``, not ``isinstance``: the latter asks a dead
    weak proxy for its class and raises ReferenceError."""
    return sum(1 for o in gc.get_objects()
               if issubclass(type(o), greenlet.greenlet) and not o.dead)


# -- a fault under a steady publisher (Sentinel and Cluster failovers, slot moves) ---------

class PollClient:
    """A long-poll client going from cursor to cursor, keeping what it got and its resets."""

    def __init__(self, server: ServerProcess, channel: str, since: str) -> None:
        self.items: list[tuple[str, str]] = []
        self.resets: list[int] = []  # how many items it had when told of a gap
        self._greenlet = gevent.spawn(self._run, server, channel, since)

    def _run(self, server: ServerProcess, channel: str, cursor: str) -> None:
        while True:
            try:
                answer = requests.get(f"{server.url}/poll/{channel}",
                                      params={"since": cursor, "timeout": 2}, timeout=10)
            except requests.RequestException:
                gevent.sleep(0.2)
                continue
            if answer.status_code != 200:  # 503 while the broker is away: ask again
                gevent.sleep(0.2)
                continue
            body = answer.json()
            if body.get("reset"):
                self.resets.append(len(self.items))
            self.items += [(m["id"], m["data"]) for m in body["messages"]]
            cursor = body["cursor"]

    def failure(self) -> str:
        return repr(self._greenlet.exception) if self._greenlet.dead else ""

    def stop(self) -> None:
        self._greenlet.kill()


class SSEClient:
    """An SSE client collecting (id, data) of messages and counting resets; like a browser's
    EventSource it reconnects with ``Last-Event-ID`` when the stream ends (an open stream
    ends with ``event: error`` when it cannot read the broker)."""

    def __init__(self, server: ServerProcess, channel: str, since: str) -> None:
        self.items: list[tuple[str, str]] = []
        self.resets: list[int] = []
        self.url = f"{server.url}/sse/{channel}"
        self.last_id = since
        self.stream: EventStream | None = None
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            try:
                self.stream = EventStream(self.url, {"Last-Event-ID": self.last_id})
                self._read(self.stream)
            except (StopIteration, requests.RequestException):
                pass
            gevent.sleep(0.5)

    def _read(self, stream: EventStream) -> None:
        while True:
            event = stream.next(timeout=120)
            kind = getattr(event, "type", None)
            if kind == "reset":
                self.resets.append(len(self.items))
            elif kind in ("message", ""):
                self.items.append((event.id, event.data))
                self.last_id = event.id
            elif kind == "error":
                return

    def failure(self) -> str:
        return repr(self._greenlet.exception) if self._greenlet.dead else ""

    def stop(self) -> None:
        self._greenlet.kill()
        if self.stream is not None:
            self.stream.close()


class V1Client:
    """A ``wsrelay.v1`` WebSocket subscribed from ``since``, collecting (id, data) of
    messages and counting ``reset`` envelopes."""

    def __init__(self, server: ServerProcess, channel: str, since: str) -> None:
        self.items: list[tuple[str, str]] = []
        self.resets: list[int] = []
        self.ws = server.ws("/ws", subprotocols=["wsrelay.v1"])
        self.ws.send(json.dumps({"type": "subscribe", "channel": channel, "since": since}))
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            envelope = json.loads(self.ws.recv(timeout=120))
            if envelope["type"] == "reset":
                self.resets.append(len(self.items))
            elif envelope["type"] == "message":
                self.items.append((envelope["id"], envelope["data"]))

    def failure(self) -> str:
        return repr(self._greenlet.exception) if self._greenlet.dead else ""

    def stop(self) -> None:
        self._greenlet.kill()
        self.ws.close()


@dataclass
class Outage:
    """What a fault cost the publisher: publishes refused, and the seconds from the fault
    until publishing succeeded again (after the last refusal)."""

    refused: int
    resumed_after: float


def publish_through(servers: list[ServerProcess], channel: str, fault) -> Outage:
    """Run ``fault()`` under a steady publisher and check what clients got.

    A publisher posts ``m<n>`` every 20 ms to the servers in turn; a raw WebSocket on
    each server, a long-poll and a wsrelay.v1 client on the first and an SSE client on the
    second follow
    ``channel`` from before the first message. ``fault()`` runs after 30 acknowledged
    messages and returns once the fault happened; 30 more must then be acknowledged.
    Then: no id was handed out twice; each live WebSocket got every acknowledged message
    once and in order; each cursor client every id once and in order, with its own id,
    and a message missing only after a reset.
    """
    from wsrelay.ids import MessageId

    a, b = servers[0], servers[-1]
    begin = requests.get(f"{a.url}/poll/{channel}", params={"timeout": 0},
                         timeout=10).json()["cursor"]
    sockets = [server.ws(f"/ws/{channel}?since={begin}") for server in servers]
    received: list[list[str]] = [[] for _ in sockets]

    def collect(ws: WSClient, into: list[str]) -> None:
        while True:
            into.append(str(ws.recv(timeout=120)))

    readers = [gevent.spawn(collect, ws, got) for ws, got in zip(sockets, received, strict=True)]
    clients: list[PollClient | SSEClient | V1Client] = [
        PollClient(a, channel, begin), SSEClient(b, channel, begin), V1Client(a, channel, begin)]
    accepted: dict[str, str] = {}  # text -> id
    accepted_at: list[float] = []
    refused: list[float] = []

    def publish_steadily() -> None:
        for n in range(10**9):
            text = f"m{n}"
            try:
                answer = requests.post(f"{servers[n % len(servers)].url}/publish/{channel}",
                                       data=text, timeout=10,
                                       headers={"Content-Type": "text/plain; charset=utf-8"})
            except requests.RequestException:
                answer = None
            if answer is not None and answer.status_code == 200:
                accepted[text] = answer.json()["id"]
                accepted_at.append(time.monotonic())
            else:
                assert answer is None or answer.json()["error"] == "broker_unavailable"
                refused.append(time.monotonic())
            gevent.sleep(0.02)

    publisher = gevent.spawn(publish_steadily)
    try:
        wait_until(lambda: len(accepted) >= 30, 20)
        before = len(accepted)
        began = time.monotonic()
        fault()
        wait_until(lambda: len(accepted) >= before + 30, 60,
                   message=f"publishing did not resume: {a.health()} {b.health()}")
        publisher.kill()
        last_refusal = max(refused, default=began)
        resumed = min(t for t in accepted_at if t >= last_refusal)

        assert len(set(accepted.values())) == len(accepted), "an id was handed out twice"
        texts = sorted(accepted, key=lambda text: MessageId.parse(accepted[text]))
        wait_until(lambda: all(texts[-1] in got for got in received), 20)
        wait_until(lambda: all(texts[-1] in [d for _, d in c.items] for c in clients), 20,
                   message=str([(type(c).__name__, c.items[-3:], c.resets, c.failure())
                                for c in clients]))
        for got in received:  # live WebSockets: everything accepted, once, in order
            assert len(got) == len(set(got)), "a duplicate"
            assert [t for t in got if t in accepted] == texts
        for client in clients:  # cursors: every id once, in order; a missing one after a reset
            ids = [MessageId.parse(i) for i, _ in client.items]
            assert ids == sorted(set(ids)), "a duplicate or a step back"
            for id_, text in client.items:
                if text in accepted:
                    assert accepted[text] == id_, f"{text} came with another id"
            got_texts = [text for _, text in client.items]
            missing = [t for t in texts if t not in got_texts]
            assert not missing or client.resets, f"missing without a reset: {missing}"
        return Outage(len(refused), resumed - began)
    finally:
        publisher.kill()
        gevent.killall(readers)
        for ws in sockets:
            ws.close()
        for client in clients:
            client.stop()


# -- a wsrelay app served in this process (long-polls held without a greenlet) --------------


class Relay:
    """A wsrelay app served in this process on a free port, with its access log (none with
    ``access_log=False``)."""

    def __init__(self, access_log: bool = True, **config) -> None:
        self.app = create_app({"WSRELAY_BROKER_URL": "memory://", **config})
        self.state = self.app.extensions["wsrelay"]
        self.hub = self.state.hub
        self.log = io.StringIO()
        self.server = WSGIServer(("127.0.0.1", 0), self.app, handler_class=RelayHandler,
                                 log=self.log if access_log else None)
        self.server.start()
        self.port = self.server.server_port

    def close(self) -> None:
        self.server.stop()
        self.state.close()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, path: str, *headers: str) -> bytes:
        lines = "".join(f"{header}\r\n" for header in headers)
        return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n{lines}\r\n".encode()

    def cursor(self, channel: str) -> str:
        sock = self.connect()
        sock.sendall(self.request(f"/poll/{channel}?timeout=0"))
        cursor = json.loads(read_answer(sock)[1])["cursor"]
        sock.close()
        return cursor

    def waiters(self) -> int:
        return self.hub.counts()["waiters"]


def read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole answer (head, body) from ``sock``; nothing may follow it."""
    (answer,) = read_answers(sock, 1)
    return answer


def read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """``count`` whole answers (head, body) from ``sock``, and nothing after them."""
    data = bytearray()
    answers = []
    while len(answers) < count:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {bytes(data)!r}"
            data += chunk
        end = data.index(b"\r\n\r\n")
        head = bytes(data[:end])
        del data[:end + 4]
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        while len(data) < length:
            chunk = sock.recv(1 << 20)
            assert chunk, "closed in the body"
            data += chunk
        answers.append((head, bytes(data[:length])))
        del data[:length]
    assert data == b"", "no more than the answers asked for"
    return answers


def closed(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
