"""The bare-gevent baseline's wire: what it must get right for the bench's clients to count it.

Its servers run in the quick bench (tests/cli/test_bench.py: idle and poll on
both ways of serving); these check the pieces the load generator relies on.
"""

import json

from tests.support import client_frame
from wsrelay.bench.baselines.gevent_floor import (
    Channel,
    client_frames,
    split_head,
    switching_protocols,
)

TEXT = 0x1


def test_the_101_carries_rfc_6455s_accept_key():
    head = (b"GET /ws/bench HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")

    answer = switching_protocols(head)

    assert answer.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" in answer


def test_masked_frames_of_every_length_form_are_read_whole_at_any_split():
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 70_000, b"0" * 19]
    stream = b"".join(client_frame(TEXT, payload) for payload in payloads)

    for split in (1, 2, 7, 130, 70_010, len(stream) - 1):
        first, rest = client_frames(stream[:split])
        second, left = client_frames(rest + stream[split:])
        assert first + second == payloads
        assert left == b""


def test_a_poll_gets_every_message_after_its_cursor_and_the_new_cursor():
    channel = Channel()
    assert channel.cursor(b"/poll/bench?timeout=30") == 0
    channel.publish(b"one")
    channel.publish(b"two")

    answer = channel.answer(channel.cursor(b"/poll/bench?timeout=30&since=1"))

    head, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body) == {"messages": [{"data": "two"}], "cursor": "2"}
    assert b"Content-Length: %d" % len(body) in head


def test_a_head_is_taken_once_whole_with_its_target_and_what_follows():
    request = b"GET /poll/bench?since=3 HTTP/1.1\r\nHost: x\r\n\r\nGET /next"

    assert split_head(request[:-15]) is None
    assert split_head(request) == (b"GET /poll/bench?since=3 HTTP/1.1\r\nHost: x",
                                   b"/poll/bench?since=3", b"GET /next")
