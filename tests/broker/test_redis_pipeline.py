"""The auto-pipeline without sockets: what goes out in one write, whose answer is whose.

:class:`CommandPipeline` is fed the bytes a Redis would send; every test here
runs in-process, byte for byte.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import examples
from wsrelay.broker.redis.pipeline import CommandPipeline, ProtocolError, ReplyError


def test_everything_queued_goes_out_as_one_block_in_queue_order():
    pipeline = CommandPipeline()
    pipeline.submit("SET", "a", 1)
    pipeline.submit("EVALSHA", b"f00", 2, "k1", "k2", b"\x00bin")
    assert (pipeline.queued, pipeline.in_flight) == (2, 0)
    assert pipeline.outgoing() == (
        b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n"
        b"*6\r\n$7\r\nEVALSHA\r\n$3\r\nf00\r\n$1\r\n2\r\n$2\r\nk1\r\n$2\r\nk2\r\n$4\r\n\x00bin\r\n"
    )
    assert (pipeline.queued, pipeline.in_flight, len(pipeline)) == (0, 2, 2)
    assert pipeline.outgoing() == b""  # nothing new queued


def test_commands_queued_during_a_round_trip_wait_for_the_next_block():
    pipeline = CommandPipeline()
    first = pipeline.submit("INCR", "n")
    pipeline.outgoing()
    second = pipeline.submit("INCR", "n")
    assert pipeline.receive(b":1\r\n") == 1
    assert (first.done, first.value, second.done) == (True, 1, False)
    assert pipeline.outgoing() == b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"
    pipeline.receive(b":2\r\n")
    assert second.value == 2


def test_an_error_answers_its_own_command_only():
    pipeline = CommandPipeline()
    before, failing, after = (pipeline.submit("GET", k) for k in ("a", "b", "c"))
    pipeline.outgoing()
    pipeline.receive(b"$1\r\nA\r\n-WRONGTYPE Operation against a key\r\n$1\r\nC\r\n")
    assert (before.value, before.error) == (b"A", None)
    assert failing.done and failing.value is None
    assert isinstance(failing.error, ReplyError) and str(failing.error).startswith("WRONGTYPE")
    assert (after.value, after.error) == (b"C", None)


def test_replies_split_anywhere_resolve_once_complete():
    pipeline = CommandPipeline()
    reply = pipeline.submit("EVALSHA", "x", 0)
    pipeline.outgoing()
    wire = b"*3\r\n:1700000000000\r\n:7\r\n*1\r\n$5\r\nhello\r\n"
    for byte in wire[:-1]:
        pipeline.receive(bytes([byte]))
        assert not reply.done
    pipeline.receive(wire[-1:])
    assert reply.value == [1700000000000, 7, [b"hello"]]


def test_callbacks_run_in_order_and_one_that_fails_costs_the_others_nothing():
    pipeline = CommandPipeline()
    seen: list[int] = []
    replies = [pipeline.submit("PING") for _ in range(3)]
    replies[0].callback = lambda r: seen.append(0)
    replies[1].callback = lambda r: 1 / 0
    replies[2].callback = lambda r: seen.append(2)
    pipeline.outgoing()
    assert pipeline.receive(b"+PONG\r\n" * 3) == 3
    assert seen == [0, 2] and all(r.value == b"PONG" for r in replies)


def test_a_lost_connection_fails_every_waiting_command_and_starts_afresh():
    pipeline = CommandPipeline()
    sent = pipeline.submit("GET", "a")
    pipeline.outgoing()
    pipeline.receive(b"$5\r\nhal")  # half a reply, then the connection broke
    queued = pipeline.submit("GET", "b")
    lost = ConnectionError("gone")
    assert pipeline.fail(lost) == 2
    assert sent.error is lost and queued.error is lost and len(pipeline) == 0
    again = pipeline.submit("GET", "a")
    pipeline.outgoing()
    pipeline.receive(b"$1\r\nA\r\n")  # the new connection's parser has no half reply
    assert again.value == b"A"


def test_only_the_last_queued_command_grows_and_counts_each_part():
    pipeline = CommandPipeline()
    first = pipeline.submit("RPUSH", "a", 1)
    assert pipeline.extend(first, 2) and pipeline.extend(first, 3)
    other = pipeline.submit("RPUSH", "b", 1)
    assert not pipeline.extend(first, 4)  # another command was queued after it
    assert (pipeline.queued, len(pipeline)) == (2, 4)
    assert pipeline.outgoing() == (b"*5\r\n$5\r\nRPUSH\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\n2\r\n"
                                   b"$1\r\n3\r\n*3\r\n$5\r\nRPUSH\r\n$1\r\nb\r\n$1\r\n1\r\n")
    assert not pipeline.extend(other, 2)  # sent: it can no longer grow
    pipeline.receive(b":3\r\n")
    assert (first.value, other.done, len(pipeline)) == (3, False, 1)
    pipeline.receive(b":1\r\n")
    assert len(pipeline) == 0


def test_a_reply_nobody_asked_for_is_a_protocol_error():
    pipeline = CommandPipeline()
    with pytest.raises(ProtocolError):
        pipeline.receive(b"+OK\r\n")


def test_commands_put_first_go_ahead_and_nobody_waits_for_them():
    pipeline = CommandPipeline()
    mine = pipeline.submit("GET", "a")
    pipeline.put_first([("SCRIPT", "LOAD", "return 1")])
    assert pipeline.outgoing().startswith(b"*3\r\n$6\r\nSCRIPT\r\n")
    pipeline.receive(b"$40\r\n" + b"e" * 40 + b"\r\n$1\r\nA\r\n")
    assert mine.value == b"A"


@given(
    batches=st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=8), min_size=1,
                     max_size=6),
    cut=st.integers(min_value=1, max_value=50),
)
@settings(max_examples=examples(200), deadline=None)
def test_every_caller_gets_exactly_its_own_answer(batches, cut):
    """Echo commands in rounds, replies cut into arbitrary pieces: each reply is its own."""
    pipeline = CommandPipeline()
    expected = []
    for batch in batches:
        replies = [(pipeline.submit("ECHO", value), value) for value in batch]
        expected.extend(replies)
        pipeline.outgoing()
        wire = b"".join(b"$%d\r\n%s\r\n" % (len(value), value) for value in batch)
        for start in range(0, len(wire), cut):
            pipeline.receive(wire[start:start + cut])
    assert all(reply.value == value for reply, value in expected)
    assert len(pipeline) == 0
