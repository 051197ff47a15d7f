"""The hub without sockets: fake connections record the frames they were given."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from tests.support import FakeConnection, wait_until
from wsrelay.broker import Broker, MemoryBroker
from wsrelay.fairness import let_others_run
from wsrelay.hub import Encoder, MessageServer, Subscription
from wsrelay.ids import MessageId
from wsrelay.message import Message
from wsrelay.websocket import envelopes
from wsrelay.websocket.encoders import ENVELOPE, RAW
from wsrelay.websocket.protocol import encode_frame


@pytest.fixture
def make_hub() -> Iterator[Callable[..., MessageServer]]:
    """Started hubs (on a memory broker unless given one), all stopped after the test."""
    started: list[MessageServer] = []

    def make(broker: Broker | None = None, **kwargs: float) -> MessageServer:
        hub = MessageServer(broker or MemoryBroker(history_size=100, history_ttl=60), **kwargs)
        hub.start()
        started.append(hub)
        return hub

    yield make
    for hub in started:
        hub.stop()


def join(hub, name="s", channel="c", since=None, encoder=RAW, **options) -> FakeConnection:
    connection = FakeConnection(name)
    hub.attach(connection)
    hub.subscribe(Subscription(connection, channel, encoder, **options), since)
    connection.frames.clear()  # nothing was replayed without since; keep tests to the point
    return connection


def text_frames(*texts: bytes) -> list[bytes]:
    return [encode_frame(t, binary=False) for t in texts]


def test_one_frame_object_is_shared_by_every_subscriber(make_hub):
    hub = make_hub()
    connections = [join(hub, f"s{i}") for i in range(50)]
    hub.publish("c", "hello")
    first = connections[0].frames[0]
    assert first == encode_frame(b"hello", binary=False)
    assert all(c.frames[0] is first for c in connections)


def test_json_subscribers_share_one_envelope_frame_raw_ones_the_raw_frame(make_hub):
    hub = make_hub()
    raw = join(hub, "r")
    json_a, json_b = join(hub, "a", encoder=ENVELOPE), join(hub, "b", encoder=ENVELOPE)
    message = hub.publish("c", "hi")
    assert raw.frames == text_frames(b"hi")
    assert json_a.frames[0] is json_b.frames[0]
    assert json_a.frames == text_frames(envelopes.message(message))


class Lines:
    """An encoder of another transport than WebSocket: one text line per message, counting
    what it was asked to encode."""

    def __init__(self) -> None:
        self.encoded: list[MessageId] = []

    def message(self, message: Message) -> bytes:
        self.encoded.append(message.id)
        return b"%s %s\n" % (str(message.id).encode(), message.data)

    def reset(self, channel: str, cursor: MessageId) -> bytes:
        return f"reset {channel} {cursor}\n".encode()


def test_each_encoder_encodes_a_message_once_whatever_its_subscribers(make_hub):
    hub = make_hub()
    lines: Encoder = Lines()
    lined = [join(hub, f"l{i}", encoder=lines) for i in range(20)]
    raw = [join(hub, f"r{i}") for i in range(20)]
    enveloped = [join(hub, f"e{i}", encoder=ENVELOPE) for i in range(20)]
    message = hub.publish("c", "hi")
    assert lines.encoded == [message.id]
    assert all(c.frames == [f"{message.id} hi\n".encode()] for c in lined)
    assert all(c.frames[0] is lined[0].frames[0] for c in lined)
    assert all(c.frames == text_frames(b"hi") for c in raw)
    assert all(c.frames == text_frames(envelopes.message(message)) for c in enveloped)


def test_an_encoder_tells_of_a_gap_in_its_own_words(make_hub):
    hub = make_hub(MemoryBroker(history_size=1, history_ttl=60))
    first = hub.publish("c", "1")
    hub.publish("c", "2")
    hub.publish("c", "3")
    connection = FakeConnection("l")
    page = hub.subscribe(Subscription(connection, "c", Lines()), first.id)
    assert page.reset
    assert connection.frames == [f"reset c {page.cursor}\n".encode(), f"{page.cursor} 3\n".encode()]
    assert hub.counts()["subscribers"] == 1


def test_an_encoding_that_cannot_tell_a_gap_is_not_subscribed(make_hub):
    """The raw relay's frames cannot say that messages were missed: the hub queues nothing
    and keeps no subscription; the page says reset, for the raw mode to close with 4410."""
    hub = make_hub(MemoryBroker(history_size=1, history_ttl=60))
    first = hub.publish("c", "1")
    hub.publish("c", "2")
    hub.publish("c", "3")
    connection = FakeConnection("r")
    page = hub.subscribe(Subscription(connection, "c", RAW), first.id)
    assert page.reset
    assert connection.frames == []
    assert hub.counts()["subscribers"] == 0
    hub.publish("c", "4")
    assert connection.frames == []


def test_one_connection_many_channels(make_hub):
    hub = make_hub()
    connection = FakeConnection("multi")
    for channel in ("a", "b"):
        hub.subscribe(Subscription(connection, channel, ENVELOPE), None)
    hub.publish("a", "to a")
    hub.publish("b", "to b")
    hub.publish("other", "not for us")
    channels = [json.loads(f[2:])["channel"] for f in connection.frames]
    assert channels == ["a", "b"]


def test_flusher_runs_once_per_burst_not_per_message(make_hub):
    hub = make_hub()
    connection = join(hub)
    for i in range(100):
        hub.publish("c", str(i))
    gevent.sleep(0)  # let the flusher run
    assert len(connection.frames) == 100
    assert connection.flushes == 1


def test_an_idle_connection_is_written_at_once_a_busy_one_at_the_end_of_its_window(make_hub):
    """The write window: the first message after a pause goes at once; those that follow
    within the window wait for its end and go together, in one flush."""
    hub = make_hub(write_delay=0.3)
    connection = join(hub)
    connection.written = time.monotonic() - 1  # last written a second ago: idle
    hub.publish("c", "first")
    gevent.sleep(0)
    assert connection.flushes == 1, "a lone message waits for nothing"
    hub.publish("c", "second")
    hub.publish("c", "third")
    gevent.sleep(0.1)
    assert connection.flushes == 1, "written 0.1 s ago: it waits for the end of its window"
    wait_until(lambda: connection.flushes == 2, 2, 0.01)
    gevent.sleep(0.1)
    assert connection.flushes == 2, "both in one write"
    assert connection.frames == text_frames(b"first", b"second", b"third")


def test_each_connection_has_its_own_window(make_hub):
    """A connection written recently waits; one idle on another channel does not."""
    hub = make_hub(write_delay=0.5)
    busy, quiet = join(hub, "busy", channel="a"), join(hub, "quiet", channel="b")
    busy.written, quiet.written = time.monotonic(), time.monotonic() - 1
    hub.publish("a", "to busy")
    hub.publish("b", "to quiet")
    gevent.sleep(0.05)
    assert (busy.flushes, quiet.flushes) == (0, 1)
    wait_until(lambda: busy.flushes == 1, 2, 0.01)


def test_connections_written_in_one_pass_fall_due_together(make_hub):
    """Writing many sockets takes time; the next window still writes them all in one pass
    rather than one pass for each few that fell due meanwhile."""

    class Slow(FakeConnection):
        def flush(self) -> None:
            end = time.perf_counter() + 0.002  # a write that takes 2 ms, without yielding
            while time.perf_counter() < end:
                pass
            super().flush()

    hub = make_hub(write_delay=0.3)
    connections = []
    for n in range(40):
        connection = Slow(f"s{n}")
        hub.attach(connection)
        hub.subscribe(Subscription(connection, "c", RAW), None)
        connections.append(connection)
    passes = []
    flush_pending = hub.flush_pending

    def counted() -> float | None:
        before = sum(c.flushes for c in connections)
        timeout = flush_pending()
        if sum(c.flushes for c in connections) > before:
            passes.append(time.monotonic())
        return timeout

    hub.flush_pending = counted
    hub.publish("c", "first")  # idle: one pass writes all 40, over 80 ms
    wait_until(lambda: all(c.flushes == 1 for c in connections), 2, 0.01)
    hub.publish("c", "second")
    wait_until(lambda: all(c.flushes == 2 for c in connections), 3, 0.01)
    assert len(passes) == 2, f"{len(passes)} passes wrote the two windows"


def test_a_pass_waits_for_input_at_hand_at_most_one_more_window(make_hub):
    """While a client's input is still being handled (a flood that never ends, here), a due
    write waits for it, but not longer than one more write delay."""
    hub = make_hub(write_delay=0.2)
    connection = join(hub)
    connection.written = time.monotonic() - 1  # idle: due at once
    hub.publish("c", "first")
    started = time.monotonic()
    while not connection.flushes and time.monotonic() - started < 2:
        let_others_run(more_input=True)
    assert 0.15 <= time.monotonic() - started < 1.0
    assert connection.frames == text_frames(b"first")


def test_a_pass_waits_for_nothing_once_the_input_is_handled(make_hub):
    hub = make_hub(write_delay=0.5)
    connection = join(hub)
    connection.written = time.monotonic() - 1
    for n in range(10):  # a burst, fanned out a piece at a time
        hub.publish("c", str(n))
        let_others_run(more_input=True)
    assert connection.flushes == 0, "held while the burst was being handled"
    let_others_run()
    assert connection.flushes == 1
    assert connection.frames == text_frames(*(str(n).encode() for n in range(10)))


def test_the_latency_metric_counts_the_wait_for_the_window(make_hub):
    hub = make_hub(write_delay=0.3)
    connection = join(hub)
    connection.written = time.monotonic()
    hub.publish("c", "held")
    gevent.sleep(0.05)
    assert hub.stats.latencies == [], "not written yet"
    wait_until(lambda: connection.flushes == 1, 2, 0.01)
    gevent.sleep(0)
    [latency] = hub.stats.latencies
    assert latency >= 0.2


def test_no_write_delay_flushes_every_message_as_soon_as_the_publisher_yields(make_hub):
    hub = make_hub(write_delay=0)
    connection = join(hub)
    for n in range(5):
        hub.publish("c", str(n))
        gevent.sleep(0)
        assert connection.flushes == n + 1


def test_echo_off_leaves_out_the_sender_only(make_hub):
    hub = make_hub()
    sender, other = join(hub, "me", echo=False), join(hub, "other", echo=False)
    hub.publish("c", "x", sender="me")
    assert sender.frames == []
    assert len(other.frames) == 1


def test_messages_gathered_from_a_read_reach_each_subscriber_in_one_piece(make_hub):
    """What a reader publishes between gather and release is queued on each subscriber as one
    piece of bytes: its frames joined, in order (one push per subscriber, not one per
    message), and counted as the messages they are."""
    hub = make_hub()
    connections = [join(hub, f"s{i}") for i in range(20)]
    hub.gather()
    for n in range(50):
        hub.publish("c", f"m{n}")
    assert all(c.frames == [] for c in connections), "nothing is queued before the release"
    hub.release()
    expected = b"".join(text_frames(*(b"m%d" % n for n in range(50))))
    assert all(c.frames == [expected] for c in connections)
    assert all(c.sent == 50 for c in connections)
    assert hub.stats.delivered == 50 * 20
    gevent.sleep(0)
    assert all(c.flushes == 1 for c in connections)


def test_a_gathered_run_leaves_out_each_senders_own_messages_where_echo_is_off(make_hub):
    hub = make_hub()
    me, you = join(hub, "me", echo=False), join(hub, "you", echo=False)
    everyone = join(hub, "all")
    hub.gather()
    for n, sender in enumerate(["me", "you", "me", "me"]):
        hub.publish("c", f"{sender}{n}", sender=sender)
    hub.release()
    assert me.frames == [b"".join(text_frames(b"you1"))]
    assert you.frames == [b"".join(text_frames(b"me0", b"me2", b"me3"))]
    assert everyone.frames == [b"".join(text_frames(b"me0", b"you1", b"me2", b"me3"))]
    assert (me.sent, you.sent, everyone.sent) == (1, 3, 4)
    hub.gather()
    hub.publish("c", "mine", sender="me")
    hub.release()
    assert me.frames == [b"".join(text_frames(b"you1"))], "nothing of its own alone"


def test_gathered_messages_go_one_by_one_to_an_encoder_whose_pieces_do_not_join(make_hub):
    """A long-poll's items are members of a JSON answer, not pieces of a stream: an encoder
    without ``joins`` gets each message queued alone, its own sender's left out."""
    hub = make_hub()
    lines: Encoder = Lines()
    lined, mine = join(hub, "l", encoder=lines), join(hub, "me", encoder=lines, echo=False)
    hub.gather()
    sent = [hub.publish("c", text, sender="me" if text == "b" else None) for text in "abc"]
    hub.release()
    assert lined.frames == [f"{m.id} {m.data.decode()}\n".encode() for m in sent]
    assert mine.frames == [lined.frames[0], lined.frames[2]]
    assert lines.encoded == [m.id for m in sent], "each encoded once"


def test_gathered_messages_keep_their_order_across_channels(make_hub):
    hub = make_hub()
    connection = FakeConnection("multi")
    for channel in ("a", "b"):
        hub.subscribe(Subscription(connection, channel, RAW), None)
    hub.gather()
    for channel, text in (("a", "a1"), ("a", "a2"), ("b", "b1"), ("a", "a3")):
        hub.publish(channel, text)
    hub.release()
    assert b"".join(connection.frames) == b"".join(text_frames(b"a1", b"a2", b"b1", b"a3"))


def test_a_frame_of_a_connections_own_follows_the_messages_gathered_before_it(make_hub):
    """An ack is queued after the message it acknowledges, as without gathering."""
    hub = make_hub()
    connection = join(hub, encoder=ENVELOPE)
    hub.gather()
    message = hub.publish("c", "hi")
    hub.send(connection, b"ack")
    hub.publish("c", "after")
    hub.release()
    assert len(connection.frames) == 3
    assert json.loads(connection.frames[0][2:])["id"] == str(message.id)
    assert connection.frames[1] == b"ack"
    assert json.loads(connection.frames[2][2:])["data"] == "after"


def test_who_comes_or_leaves_during_a_gathering_gets_exactly_what_was_published_meanwhile(
    make_hub,
):
    hub = make_hub()
    leaving = FakeConnection("leaving")
    leaving_subscription = Subscription(leaving, "c", RAW)
    hub.subscribe(leaving_subscription, None)
    hub.gather()
    hub.publish("c", "before")
    coming = FakeConnection("coming")
    hub.subscribe(Subscription(coming, "c", RAW), None)
    hub.publish("c", "between")
    hub.unsubscribe(leaving_subscription)
    hub.publish("c", "after")
    hub.release()
    assert b"".join(leaving.frames) == b"".join(text_frames(b"before", b"between"))
    assert b"".join(coming.frames) == b"".join(text_frames(b"between", b"after"))


def test_a_message_gathered_while_history_is_read_is_not_delivered_twice(make_hub):
    class RacingBroker(MemoryBroker):
        """A message published (and delivered) just before the history read that holds it."""

        def history(self, channel, since):
            self.publish(channel, b"racing", binary=False)
            return super().history(channel, since)

    hub = make_hub(RacingBroker(history_size=100, history_ttl=60))
    first = hub.publish("c", "1")
    connection = FakeConnection("r")
    hub.gather()
    hub.subscribe(Subscription(connection, "c", RAW), first.id)
    hub.publish("c", "after")
    hub.release()
    assert b"".join(connection.frames) == b"".join(text_frames(b"racing", b"after"))


def test_the_flusher_queues_what_a_stalled_gathering_holds(make_hub):
    """A reader that waits between gather and release (it must not) delays nobody for
    longer than the flusher's next turn."""
    hub = make_hub()
    connection = join(hub)
    hub.gather()
    hub.publish("c", "held")
    gevent.sleep(0.05)
    assert connection.frames == text_frames(b"held")
    hub.release()
    assert connection.frames == text_frames(b"held")


def test_subscribe_with_since_replays_then_goes_live_without_duplicates(make_hub):
    hub = make_hub()
    first = hub.publish("c", "1")
    hub.publish("c", "2")
    connection = FakeConnection("late")
    page = hub.subscribe(Subscription(connection, "c", RAW), first.id)
    hub.publish("c", "3")
    assert connection.frames == text_frames(b"2", b"3")
    assert not page.reset


def test_json_subscription_hears_of_a_gap_before_the_replay(make_hub):
    hub = make_hub(MemoryBroker(history_size=2, history_ttl=60))
    first = hub.publish("c", "1")
    for text in ("2", "3", "4"):
        hub.publish("c", text)
    connection = FakeConnection("j")
    page = hub.subscribe(Subscription(connection, "c", ENVELOPE), first.id)
    envelopes_seen = [json.loads(f[2:]) for f in connection.frames]
    assert page.reset
    assert envelopes_seen[0] == {"type": "reset", "channel": "c", "cursor": str(page.cursor)}
    assert [e["data"] for e in envelopes_seen[1:]] == ["3", "4"]


def test_messages_arriving_during_replay_are_held_and_deduplicated(make_hub):
    class SlowBroker(MemoryBroker):
        """Publishes while history is being read, as a remote broker could."""

        def history(self, channel, since):
            page = super().history(channel, since)
            self.publish(channel, b"during", binary=False)  # after the read: must follow
            return page

    hub = make_hub(SlowBroker(history_size=100, history_ttl=60))
    first = hub.publish("c", "1")
    connection = FakeConnection("r")
    hub.subscribe(Subscription(connection, "c", RAW), first.id)
    hub.publish("c", "after")
    assert connection.frames == text_frames(b"during", b"after")


def test_unsubscribed_and_unwatched_channels_cost_nothing(make_hub):
    hub = make_hub()
    connection = FakeConnection("s")
    subscription = Subscription(connection, "c", RAW)
    hub.attach(connection)
    hub.subscribe(subscription, None)
    stream = FakeConnection("sse")
    hub.hold(stream)
    assert hub.counts() == {"connections": 1, "channels": 1, "subscribers": 1, "waiters": 1}
    hub.let_go(stream)
    hub.unsubscribe(subscription)
    hub.unsubscribe(subscription)  # twice is harmless
    hub.detach(connection)
    assert hub.counts() == {"connections": 0, "channels": 0, "subscribers": 0, "waiters": 0}


def test_channels_everyone_left_leave_nothing_in_the_hub_or_broker(make_hub):
    """Without a shared broker there is no presence to report, so nothing is kept per
    channel name once its last subscriber or waiter left."""
    hub = make_hub()
    connection = FakeConnection("s")
    hub.attach(connection)
    for n in range(1000):
        subscription = Subscription(connection, f"c{n}", ENVELOPE)
        hub.subscribe(subscription, None)
        hub.unsubscribe(subscription)
        uncounted = Subscription(connection, f"w{n}", ENVELOPE, counted=False)
        hub.subscribe(uncounted, None)
        hub.unsubscribe(uncounted)
    assert hub.counts() == {"connections": 1, "channels": 0, "subscribers": 0, "waiters": 0}
    assert hub._presence_changed == set()
    assert hub.broker.status()["channels"] == hub.broker.status()["watched"] == 0


def test_presence_counts_local_subscriptions(make_hub):
    hub = make_hub()
    join(hub, "a")
    join(hub, "b")
    join(hub, "c", channel="other")
    assert hub.presence("c") == 2
    assert hub.presence("nobody") == 0


def test_presence_leaves_out_uncounted_subscriptions(make_hub):
    """SSE streams and long-polls are subscriptions too, but presence counts WebSockets."""
    hub = make_hub()
    join(hub, "a")
    stream = FakeConnection("sse")
    subscription = Subscription(stream, "c", ENVELOPE, counted=False)
    hub.subscribe(subscription, None)
    assert hub.presence("c") == 1
    assert hub.counts()["subscribers"] == 1  # the WebSockets'; the stream is a waiter
    hub.unsubscribe(subscription)
    assert hub.presence("c") == 1 and hub._uncounted == {}


def test_drain_closes_held_streams_and_waits_for_them(make_hub):
    hub = make_hub()
    stream = FakeConnection("sse")
    hub.hold(stream)
    original = stream.close

    def close(code, reason):
        original(code, reason)
        hub.let_go(stream)

    stream.close = close
    started = time.monotonic()
    hub.drain(5.0)
    assert stream.aborted and hub.counts()["waiters"] == 0
    assert time.monotonic() - started < 1  # it left when closed: no wait for the deadline


def test_heartbeat_pings_each_connection_once_and_drops_silent_ones(make_hub):
    hub = make_hub(ping_interval=1, ping_timeout=1)
    alive, silent = FakeConnection("alive"), FakeConnection("silent")
    for connection in (alive, silent):
        hub.attach(connection)
        for channel in ("a", "b"):  # two subscriptions, still one ping
            hub.subscribe(Subscription(connection, channel, RAW), None)
    alive.frames.clear()
    now = time.monotonic()
    silent.last_seen = now - 3
    hub.ping_all(now)
    assert alive.pings == 1 and not alive.aborted
    assert silent.aborted and silent.pings == 0


def test_a_failing_connection_does_not_stop_the_flush_of_others(make_hub):
    hub = make_hub()

    class Broken(FakeConnection):
        def flush(self):
            raise RuntimeError("boom")

    broken, fine = Broken("b"), FakeConnection("f")
    for connection in (broken, fine):
        hub.subscribe(Subscription(connection, "c", RAW), None)
    hub.publish("c", "x")
    gevent.sleep(0)
    assert broken.aborted
    assert fine.flushes == 1


def test_ids_of_replayed_and_live_messages_follow_each_other(make_hub):
    hub = make_hub()
    connection = FakeConnection("j")
    published = [hub.publish("c", str(i)) for i in range(3)]
    hub.subscribe(Subscription(connection, "c", ENVELOPE), MessageId(published[0].id.epoch, 0))
    published.append(hub.publish("c", "live"))
    ids = [json.loads(f[2:])["id"] for f in connection.frames]
    assert ids == [str(m.id) for m in published]
