from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.websocket.outbox import WRITE_SIZE, Outbox


def drain(outbox: Outbox, step: int) -> bytes:
    out = b""
    while outbox:
        chunk = bytes(outbox.peek())[:step]
        outbox.consume(len(chunk))
        out += chunk
    return out


def test_frames_come_out_in_order_whatever_the_write_sizes():
    frames = [bytes([i]) * (i * 7 + 1) for i in range(60)]
    for step in (1, 3, 64, 10_000):
        outbox = Outbox(10**9)
        for frame in frames:
            outbox.push(frame)
        assert drain(outbox, step) == b"".join(frames)
        assert outbox.size == 0


def test_small_frames_are_joined_into_one_write_up_to_the_write_size():
    outbox = Outbox(10**9)
    for _ in range(10_000):
        outbox.push(b"x" * 100)
    assert len(outbox.peek()) == WRITE_SIZE // 100 * 100


def test_push_reports_overflow():
    outbox = Outbox(250)
    assert outbox.push(b"a" * 100)
    assert outbox.push(b"b" * 100)
    assert not outbox.push(b"c" * 100)


def test_drop_unstarted_keeps_the_rest_of_a_partly_written_frame():
    outbox = Outbox(10**9)
    for frame in (b"AAAA", b"BBBB", b"CCCC"):
        outbox.push(frame)
    outbox.consume(2)  # "AA" of the first frame went out
    outbox.drop_unstarted()
    rest = drain(outbox, 100)
    # what stays ends on a frame boundary and completes the partly sent frame
    assert rest.startswith(b"AA")
    assert rest in (b"AA", b"AABBBBCCCC")


def test_drop_unstarted_with_nothing_written_drops_everything():
    outbox = Outbox(10**9)
    outbox.push(b"abc")
    outbox.drop_unstarted()
    assert not outbox
    assert outbox.size == 0


def test_drop_unstarted_after_a_partial_write_and_more_frames_keeps_a_valid_stream():
    """The partly written frame is finished even when frames queued after it were joined."""
    frames = [b"A" * 4, b"B" * 4, b"C" * 4]
    outbox = Outbox(10**9)
    outbox.push(frames[0])
    outbox.push(frames[1])
    written = bytes(outbox.peek())[:2]  # "AA" went out, then the socket was full
    outbox.consume(2)
    outbox.push(frames[2])
    outbox.peek()
    outbox.consume(0)  # the socket took nothing this time
    outbox.drop_unstarted()  # the subscriber is closed for being too slow
    stream = written + drain(outbox, 100)
    assert stream in {b"".join(frames[:n]) for n in range(1, 4)}, stream


def test_pongs_go_out_ahead_of_frames_not_yet_begun():
    outbox = Outbox(10**9)
    outbox.push(b"data1")
    outbox.push(b"data2")
    outbox.push_pongs(b"pong")
    assert drain(outbox, 100) == b"pongdata1data2"


def test_pongs_wait_for_the_end_of_a_partly_written_write():
    """A pong never splits a frame: it goes out where the write begun ends."""
    outbox = Outbox(10**9)
    outbox.push(b"AAAA")
    outbox.push(b"BBBB")
    written = bytes(outbox.peek())[:2]  # the two frames, joined in one write, began
    outbox.consume(2)
    outbox.push(b"CCCC")
    outbox.push_pongs(b"pong")
    assert written + drain(outbox, 1) == b"AAAABBBBpongCCCC"


def test_pongs_still_waiting_are_replaced_by_newer_ones():
    """RFC 6455 5.5.3: a pong for the latest ping may stand for those not yet sent."""
    outbox = Outbox(10**9)
    outbox.push(b"data")
    outbox.peek()
    outbox.consume(0)  # the socket is full
    for n in range(1000):
        outbox.push_pongs(b"pong%d" % n)
    assert outbox.size == len(b"data") + len(b"pong999")
    assert drain(outbox, 100) == b"pong999data"


def test_pongs_count_against_the_limit_and_are_dropped_with_the_unstarted_frames():
    outbox = Outbox(10)
    assert outbox.push(b"12345678")
    assert not outbox.push_pongs(b"pong")
    outbox.drop_unstarted()
    assert outbox.size == 0
    assert not outbox


def test_pongs_the_socket_took_none_of_are_replaced_too():
    outbox = Outbox(10**9)
    outbox.push(b"data")
    outbox.push_pongs(b"old")
    assert bytes(outbox.peek()) == b"old", "pongs go out in a write of their own"
    outbox.consume(0)
    outbox.push_pongs(b"new")
    assert outbox.size == len(b"datanew")
    assert drain(outbox, 100) == b"newdata", "never an older pong after a newer"


def test_pongs_partly_written_are_finished_before_newer_ones():
    outbox = Outbox(10**9)
    outbox.push(b"data")
    outbox.push_pongs(b"old")
    outbox.peek()
    outbox.consume(1)
    outbox.push_pongs(b"new")
    assert b"o" + drain(outbox, 100) == b"oldnewdata"


def _item(kind: bytes, number: int, length: int) -> bytes:
    """A frame that says what it is: kind, number and body length, then the body."""
    return kind + number.to_bytes(4, "big") + length.to_bytes(4, "big") + b"." * length


def _items(stream: bytes) -> list[tuple[bytes, int]]:
    """The whole frames in ``stream`` (a frame cut anywhere fails to parse)."""
    items, offset = [], 0
    while offset < len(stream):
        kind, number = stream[offset : offset + 1], int.from_bytes(stream[offset + 1 : offset + 5])
        length = int.from_bytes(stream[offset + 5 : offset + 9])
        assert stream[offset + 9 : offset + 9 + length] == b"." * length, "a frame was cut"
        items.append((kind, number))
        offset += 9 + length
    return items


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "pongs", "write"]),
                          st.one_of(st.integers(0, 3000), st.integers(50_000, 120_000)),
                          st.one_of(st.integers(0, 4000), st.just(10**9))),
                max_size=40))
def test_whatever_the_pushes_pongs_and_partial_writes_every_frame_goes_out_whole_once_in_order(
    operations,
):
    """Data frames come out whole, once each, in order; pongs whole, newest last, none
    older after a newer; ``size`` is always what is left to write."""
    outbox = Outbox(10**9)
    out = b""
    frames = pongs = 0
    for operation, length, step in operations:
        if operation == "push":
            frames += 1
            outbox.push(_item(b"D", frames, length))
        elif operation == "pongs":
            pongs += 1
            outbox.push_pongs(_item(b"P", pongs, length % 200))
        else:
            data = bytes(outbox.peek())[:step]
            assert len(data) <= WRITE_SIZE
            outbox.consume(len(data))
            out += data
    left = outbox.size
    tail = drain(outbox, 10**9)
    assert len(tail) == left
    assert outbox.size == 0 and not outbox
    out += tail
    items = _items(out)
    assert [n for kind, n in items if kind == b"D"] == list(range(1, frames + 1))
    sent_pongs = [n for kind, n in items if kind == b"P"]
    assert sent_pongs == sorted(set(sent_pongs))
    if pongs:
        assert sent_pongs[-1] == pongs, "the latest ping is answered"


def test_an_empty_outbox_holds_no_queue():
    outbox = Outbox(10**9)
    assert outbox._chunks is None and outbox.peek() == b""
    outbox.push(b"abc")
    outbox.push_pongs(b"p")
    assert drain(outbox, 2) == b"pabc"
    assert outbox._chunks is None, "written out: the queue goes"
    outbox.push(b"abc")
    outbox.drop_unstarted()
    assert outbox._chunks is None and not outbox
