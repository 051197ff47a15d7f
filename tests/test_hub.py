"""The hub without sockets: fake subscribers record what they were given."""

import time

import gevent

from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer
from wsrelay.protocol import PING_FRAME, encode_frame


class Recorder:
    def __init__(self, name: str, echo: bool = True) -> None:
        self.id = name
        self.echo = echo
        self.held = None
        self.dirty = False
        self.last_seen = time.monotonic()
        self.frames: list[bytes] = []
        self.flushes = 0
        self.aborted = False

    def push(self, frame: bytes) -> None:
        self.frames.append(frame)

    def flush(self) -> None:
        self.flushes += 1

    def close(self, code, reason) -> None:
        self.aborted = True

    def abort(self) -> None:
        self.aborted = True


def make_hub(**kwargs) -> MessageServer:
    hub = MessageServer(MemoryBroker(history_size=100, history_ttl=60), **kwargs)
    hub.start()
    return hub


def test_one_frame_object_is_shared_by_every_subscriber():
    hub = make_hub()
    subs = [Recorder(f"s{i}") for i in range(50)]
    for sub in subs:
        hub.subscribe("c", sub, None)
    hub.publish("c", "hello")
    first = subs[0].frames[0]
    assert first == encode_frame(b"hello", binary=False)
    assert all(sub.frames[0] is first for sub in subs)


def test_flusher_runs_once_per_burst_not_per_message():
    hub = make_hub()
    sub = Recorder("s")
    hub.subscribe("c", sub, None)
    for i in range(100):
        hub.publish("c", str(i))
    gevent.sleep(0)  # let the flusher run
    assert len(sub.frames) == 100
    assert sub.flushes == 1


def test_echo_off_leaves_out_the_sender_only():
    hub = make_hub()
    sender, other = Recorder("me", echo=False), Recorder("other", echo=False)
    hub.subscribe("c", sender, None)
    hub.subscribe("c", other, None)
    hub.publish("c", "x", sender="me")
    assert sender.frames == []
    assert len(other.frames) == 1


def test_subscribe_with_since_replays_then_goes_live_without_duplicates():
    hub = make_hub()
    first = hub.publish("c", "1")
    hub.publish("c", "2")
    sub = Recorder("late")
    page = hub.subscribe("c", sub, first.id)
    hub.publish("c", "3")
    assert sub.frames == [encode_frame(d, binary=False) for d in (b"2", b"3")]
    assert not page.reset


def test_messages_arriving_during_replay_are_held_and_deduplicated():
    class SlowBroker(MemoryBroker):
        """Publishes while history is being read, as a remote broker could."""

        def history(self, channel, since):
            page = super().history(channel, since)
            self.publish(channel, b"during", binary=False)   # after the read: must follow
            return page

    hub = MessageServer(SlowBroker(history_size=100, history_ttl=60))
    first = hub.publish("c", "1")
    sub = Recorder("r")
    hub.subscribe("c", sub, first.id)
    hub.publish("c", "after")
    assert sub.frames == [encode_frame(d, binary=False) for d in (b"during", b"after")]


def test_unsubscribed_and_unwatched_channels_cost_nothing():
    hub = make_hub()
    sub = Recorder("s")
    hub.subscribe("c", sub, None)
    with hub.watch("c"):
        assert hub.counts() == {"channels": 1, "subscribers": 1, "waiters": 1}
    hub.unsubscribe("c", sub)
    hub.unsubscribe("c", sub)  # twice is harmless
    assert hub.counts() == {"channels": 0, "subscribers": 0, "waiters": 0}


def test_watch_event_is_set_by_a_message():
    hub = make_hub()
    with hub.watch("c") as arrived:
        assert not arrived.is_set()
        hub.publish("c", "x")
        assert arrived.is_set()


def test_heartbeat_pings_live_and_drops_silent_subscribers():
    hub = make_hub(ping_interval=1, ping_timeout=1)
    alive, silent = Recorder("alive"), Recorder("silent")
    hub.subscribe("c", alive, None)
    hub.subscribe("c", silent, None)
    now = time.monotonic()
    silent.last_seen = now - 3
    hub.ping_all(now)
    assert alive.frames == [PING_FRAME]
    assert silent.aborted and silent.frames == []


def test_a_failing_subscriber_does_not_stop_the_flush_of_others():
    hub = make_hub()

    class Broken(Recorder):
        def flush(self):
            raise RuntimeError("boom")

    broken, fine = Broken("b"), Recorder("f")
    hub.subscribe("c", broken, None)
    hub.subscribe("c", fine, None)
    hub.publish("c", "x")
    gevent.sleep(0)
    assert broken.aborted
    assert fine.flushes == 1
