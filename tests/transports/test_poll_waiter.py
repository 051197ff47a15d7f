"""The long-poll's hub connection without sockets: items encoded once, one wake per batch."""

from __future__ import annotations

import json

import gevent
import gevent.event

from wsrelay.broker import MemoryBroker
from wsrelay.hub import MessageServer
from wsrelay.transports.poll_waiter import ITEMS, PollWaiter, answer


def make_hub() -> MessageServer:
    hub = MessageServer(MemoryBroker(history_size=100, history_ttl=60))
    hub.start()
    return hub


def test_every_waiter_answers_with_the_same_item_bytes():
    hub = make_hub()
    try:
        waiters = [PollWaiter("c", 1 << 20) for _ in range(3)]
        for waiter in waiters:
            hub.subscribe(waiter.subscription, None)
        message = hub.publish("c", "hello")
        assert all(waiter.items[0] is waiters[0].items[0] for waiter in waiters)
        assert json.loads(waiters[0].items[0]) == message.to_json()
        assert ITEMS.item_id(waiters[0].items[0]) == str(message.id).encode()
    finally:
        hub.stop()


class CountingWaiter(PollWaiter):
    __slots__ = ("wakes",)

    def __init__(self, channel: str, limit: int) -> None:
        super().__init__(channel, limit)
        self.wakes = 0

    def flush(self) -> None:
        self.wakes += bool(self.items)
        super().flush()


def test_a_waiter_is_woken_once_per_batch_with_all_of_it():
    hub = make_hub()
    try:
        waiter = CountingWaiter("c", 1 << 20)
        ready = gevent.event.Event()
        waiter.wake = ready.set
        hub.subscribe(waiter.subscription, None)
        gevent.sleep(0)  # the flusher had the subscription's turn: nothing to answer yet
        assert not ready.is_set()
        for n in range(5):
            hub.publish("c", f"m{n}")
        assert ready.wait(1)
        assert waiter.wakes == 1 and len(waiter.items) == 5
    finally:
        hub.stop()


def test_an_answer_stops_at_its_limit_and_its_cursor_at_its_last_item():
    hub = make_hub()
    try:
        first = hub.publish("c", "x" * 100)
        for _ in range(9):
            hub.publish("c", "x" * 100)
        waiter = PollWaiter("c", 250)
        page = hub.subscribe(waiter.subscription, None)
        assert waiter.items == []
        hub.unsubscribe(waiter.subscription)
        waiter = PollWaiter("c", 250)
        page = hub.subscribe(waiter.subscription, first.id)
        assert len(waiter.items) == 2  # items of ~150 bytes: it stops once past 250
        body = json.loads(answer("c", page.cursor, waiter.items, False))
        assert body["cursor"] == body["messages"][-1]["id"] != str(page.cursor)
        assert "reset" not in body
    finally:
        hub.stop()


def test_polls_woken_by_the_same_messages_share_one_answer_and_others_get_their_own():
    hub = make_hub()
    try:
        cursor = hub.subscribe(PollWaiter("c", 1 << 20).subscription, None).cursor
        waiters = [PollWaiter("c", 1 << 20) for _ in range(3)]
        late = PollWaiter("c", 1 << 20)
        for waiter in waiters:
            hub.subscribe(waiter.subscription, cursor)
        first = hub.publish("c", "one")
        hub.subscribe(late.subscription, first.id)
        hub.publish("c", "two")
        bodies = [answer("c", cursor, waiter.items, False) for waiter in waiters]
        assert bodies[0] is bodies[1] is bodies[2], "made once for the three"
        assert [m["data"] for m in json.loads(bodies[0])["messages"]] == ["one", "two"]
        alone = json.loads(answer("c", first.id, late.items, False))
        assert [m["data"] for m in alone["messages"]] == ["two"]
        assert alone["cursor"] == json.loads(bodies[0])["cursor"]
        assert json.loads(answer("c", cursor, waiters[0].items[:1], False))["cursor"] == str(
            first.id)
    finally:
        hub.stop()
