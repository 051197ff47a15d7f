"""The encoders the hub uses: plain or compressed, one instance per kind and deflater."""

import zlib

from tests.support import FakeConnection, server_frames
from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer, Subscription
from wsrelay.websocket import envelopes
from wsrelay.websocket.deflate import Deflater
from wsrelay.websocket.encoders import ENVELOPE, RAW, RawEncoder, compressed

CHAT = b'{"user": "ada", "text": "' + b"hello everyone, " * 64 + b'"}'


class CountingDeflater(Deflater):
    """A Deflater that counts what it compresses."""

    __slots__ = ("calls",)

    def __init__(self, window_bits: int, min_size: int) -> None:
        super().__init__(window_bits, min_size)
        self.calls = 0

    def compress(self, data: bytes) -> bytes | None:
        self.calls += 1
        return super().compress(data)


def inflate(frame: bytes) -> tuple[bool, bytes]:
    """(RSV1 set, payload inflated) of one unfragmented server frame."""
    rsv1 = bool(frame[0] & 0x40)
    length = frame[1] & 0x7F
    head = {126: 4, 127: 10}.get(length, 2)
    payload = frame[head:]
    if rsv1:
        payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
    return rsv1, payload


def test_one_compressing_encoder_per_kind_and_deflater():
    deflater = Deflater(15, 256)
    assert compressed(RAW, deflater) is compressed(RAW, deflater)
    assert compressed(ENVELOPE, deflater) is not compressed(RAW, deflater)
    assert compressed(RAW, Deflater(10, 256)) is not compressed(RAW, deflater)
    assert compressed(RAW, None) is RAW
    other = object()
    assert compressed(other, deflater) is other  # not ours (an SSE encoder): as it is


def test_a_message_is_compressed_once_for_every_subscriber():
    """The frame-once claim with compression: 500 compressing subscribers and 500 plain
    ones; the message is compressed once, and every compressing subscriber is queued the
    very same bytes object."""
    deflater = CountingDeflater(15, 256)
    hub = MessageServer(MemoryBroker(history_size=10, history_ttl=60))
    connections = []
    for n in range(1000):
        connection = FakeConnection(f"c{n}")
        encoder = compressed(RAW, deflater) if n % 2 else RAW
        hub.subscribe(Subscription(connection, "room", encoder), None)
        connection.frames.clear()
        connections.append(connection)
    hub.publish("room", CHAT, binary=False)
    frames = [connection.frames for connection in connections]
    assert deflater.calls == 1
    plain, deflated = frames[0][0], frames[1][0]
    assert all(f == [deflated] and f[0] is deflated for f in frames[1::2])
    assert all(f == [plain] and f[0] is plain for f in frames[::2])
    assert server_frames(plain) == [(1, CHAT)]
    assert inflate(deflated) == (True, CHAT)
    assert len(deflated) < len(plain) // 4


def test_small_messages_and_envelopes_under_the_threshold_go_plain():
    encoder = RawEncoder(Deflater(15, 256))
    message = MessageServer(MemoryBroker(history_size=10, history_ttl=60)).publish("c", "hi")
    assert inflate(encoder.message(message)) == (False, b"hi")
    envelope = compressed(ENVELOPE, Deflater(15, 0))
    rsv1, payload = inflate(envelope.message(message))
    assert rsv1 and payload == envelopes.message(message)

