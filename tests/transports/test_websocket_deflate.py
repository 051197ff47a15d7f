"""permessage-deflate on ``/ws`` against a real server, with a client written from RFC 7692."""

from __future__ import annotations

import json
import socket
import struct
import zlib

import pytest

from tests.support import (
    Bystander,
    client_frame,
    handshake_request,
    publish,
)

OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium offers
ANSWER = "permessage-deflate; server_no_context_takeover"
#: A chat-like JSON message of about 1 KiB, well over the 256-byte threshold.
CHAT = json.dumps({"user": "ada", "room": "general", "text": "hello everyone, " * 60}).encode()


class DeflateClient:
    """A WebSocket client that offers permessage-deflate, sends compressed frames and reads
    the server's frames as they are on the wire (RSV1 and payload)."""

    def __init__(self, port: int, path: str, offer: str | None = OFFER, **headers: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if offer is not None:
            headers["Sec_WebSocket_Extensions"] = offer
        self.sock.sendall(handshake_request(path, port, **headers))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            data += chunk
        head, _, self.buffer = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, -15)  # context taken over

    @property
    def extensions(self) -> str | None:
        return self.headers.get("sec-websocket-extensions")

    def send(self, data: bytes, *, binary: bool = False, compress: bool = True) -> None:
        opcode = 2 if binary else 1
        if compress:
            payload = self.compressor.compress(data) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
            self.sock.sendall(client_frame(opcode, payload[:-4], rsv=4))
        else:
            self.sock.sendall(client_frame(opcode, data))

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the server closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def wire_frame(self) -> tuple[int, bool, bytes]:
        """The next frame as sent: (first byte, RSV1, payload)."""
        first, second = self._read(2)
        assert first & 0x80 and not first & 0x30, f"FIN, no RSV2/RSV3: {first:#04x}"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return first, bool(first & 0x40), self._read(length)

    def recv(self) -> tuple[int, bool, bytes]:
        """The next frame: (opcode, whether it came compressed, its payload inflated)."""
        first, rsv1, payload = self.wire_frame()
        if rsv1:
            payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
        return first & 0x0F, rsv1, payload

    def close_code(self) -> int:
        while True:
            opcode, _, payload = self.recv()
            if opcode == 8:
                return struct.unpack("!H", payload[:2])[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def clients(server):
    opened: list[DeflateClient] = []

    def connect(path: str, offer: str | None = OFFER, **headers: str) -> DeflateClient:
        client = DeflateClient(server.port, path, offer, **headers)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


def test_browsers_offer_is_accepted_with_server_no_context_takeover(clients, channel):
    client = clients(f"/ws/{channel}")
    assert client.status == 101
    assert client.extensions == ANSWER


def test_compressed_messages_arrive_compressed_and_small_ones_plain(clients, channel):
    sender = clients(f"/ws/{channel}")
    sender.send(CHAT)
    sender.send(CHAT)  # refers back to the first: the server keeps the client's context
    sender.send(b"hi", compress=False)
    sender.send(b"\x00" * 1000, binary=True)
    received = [sender.recv() for _ in range(4)]
    assert received == [(1, True, CHAT), (1, True, CHAT), (1, False, b"hi"),
                        (2, True, b"\x00" * 1000)]


def test_one_compressed_frame_for_every_subscriber_plain_for_the_others(clients, server, channel):
    """The frame-once claim, seen from the wire: subscribers that agreed on the same
    parameters receive the same bytes; one that did not offer gets the plain frame."""
    compressing = [clients(f"/ws/{channel}") for _ in range(3)]
    plain = clients(f"/ws/{channel}", offer=None)
    assert plain.extensions is None
    publish(server, channel, CHAT.decode())
    frames = [client.wire_frame() for client in compressing]
    assert frames[0][1] and len(frames[0][2]) < len(CHAT) // 4
    assert frames[1:] == frames[:1] * 2
    assert plain.recv() == (1, False, CHAT)


def test_a_compressed_burst_from_a_client_reaches_each_subscriber_whole_and_in_order(
    clients, channel
):
    """A burst read at once is queued on each subscriber as one run of frames: each frame
    still compressed on its own (no context taken over), so a browser inflating them one by
    one, and a client that did not offer, both get every message, in order."""
    sender = clients(f"/ws/{channel}?echo=0")
    compressing = clients(f"/ws/{channel}")
    plain = clients(f"/ws/{channel}", offer=None)
    burst = [CHAT[:-2] + b'%03d"}' % n for n in range(100)]
    payloads = []
    for message in burst:
        payload = sender.compressor.compress(message) + sender.compressor.flush(zlib.Z_SYNC_FLUSH)
        payloads.append(client_frame(1, payload[:-4], rsv=4))
    sender.sock.sendall(b"".join(payloads))
    assert [compressing.recv() for _ in burst] == [(1, True, message) for message in burst]
    assert [plain.recv() for _ in burst] == [(1, False, message) for message in burst]


def test_a_smaller_server_window_is_honoured(clients, server, channel):
    client = clients(f"/ws/{channel}", offer="permessage-deflate; server_max_window_bits=9")
    assert client.extensions == ANSWER + "; server_max_window_bits=9"
    publish(server, channel, CHAT.decode() * 4)
    _, rsv1, payload = client.wire_frame()
    assert rsv1
    inflated = zlib.decompressobj(wbits=-9).decompress(payload + b"\x00\x00\xff\xff")
    assert inflated == CHAT * 4


def test_wsrelay_v1_envelopes_are_compressed(clients, server, channel):
    client = clients(f"/ws/{channel}", Sec_WebSocket_Protocol="wsrelay.v1")
    assert client.headers["sec-websocket-protocol"] == "wsrelay.v1"
    assert client.extensions == ANSWER
    publish(server, channel, CHAT.decode())
    opcode, rsv1, payload = client.recv()
    envelope = json.loads(payload)
    assert (opcode, rsv1, envelope["type"], envelope["data"]) == (1, True, "message", CHAT.decode())
    request = {"type": "publish", "channel": channel, "data": CHAT.decode(), "ack": 1}
    client.send(json.dumps(request).encode())  # a compressed request
    answers = [json.loads(client.recv()[2]) for _ in range(2)]
    assert {answer["type"] for answer in answers} == {"ack", "message"}


def test_rsv1_without_the_extension_closes_with_1002(clients, channel):
    client = clients(f"/ws/{channel}", offer=None)
    client.send(CHAT)
    assert client.close_code() == 1002


def test_rsv1_on_a_ping_closes_with_1002(clients, channel):
    client = clients(f"/ws/{channel}")
    client.sock.sendall(client_frame(9, b"ping", rsv=4))
    assert client.close_code() == 1002


def test_a_malformed_extensions_header_is_refused_with_400(clients, channel):
    client = clients(f"/ws/{channel}", offer="permessage-deflate;;")
    assert client.status == 400


def test_compression_off_declines_every_offer(make_server, channel):
    server = make_server(env={"WSRELAY_COMPRESSION": "0"})
    client = DeflateClient(server.port, f"/ws/{channel}")
    try:
        assert client.status == 101
        assert client.extensions is None
        client.send(b"plain", compress=False)
        assert client.recv() == (1, False, b"plain")
        client.send(CHAT)
        assert client.close_code() == 1002
    finally:
        client.close()


def test_a_decompression_bomb_closes_with_1009_and_everyone_else_is_served(
    clients, server, channel
):
    """64 MiB of zeros in about 64 KiB of deflate, ten times over, against the 1 MiB limit:
    each closed with 1009, while a bystander's messages keep coming back on time."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = bomb.compress(b"\x00" * (64 << 20)) + bomb.flush(zlib.Z_SYNC_FLUSH)
    frame = client_frame(2, payload[:-4], rsv=4)
    with Bystander(server, f"{channel}-bystander") as bystander:
        for _ in range(10):
            attacker = clients(f"/ws/{channel}")
            attacker.sock.sendall(frame)
            assert attacker.close_code() == 1009
    bystander.assert_served()
    assert server.health()["status"] == "ok"
