"""Long-polls that come back caught up (transports/poll_lane.py), in this process: a real
server without an access log (as ``manage.py serve --no-access-log`` and gunicorn serve by
default), real keep-alive sockets asking again with the cursor they were given."""

from __future__ import annotations

import gc
import json
import socket
import time

import pytest

from tests.support import (
    Relay,
    closed,
    left_for_the_collector,
    read_answer,
    read_answers,
    wait_until,
)
from wsrelay.server.parked import ParkedConnection


class Poller:
    """A keep-alive long-poll client of one channel: asks from its cursor, reads the answer
    (and takes its cursor), asks again on the same connection."""

    def __init__(self, relay: Relay, channel: str, cursor: str, *headers: str, **params
                 ) -> None:
        self.relay = relay
        self.channel = channel
        self.cursor = cursor
        self.headers = headers
        self.params = {"timeout": 30, **params}
        self.sock = relay.connect()
        self.received: list[str] = []

    def ask(self) -> None:
        query = "&".join(f"{key}={value}" for key, value in
                         {"since": self.cursor, **self.params}.items())
        self.sock.sendall(self.relay.request(f"/poll/{self.channel}?{query}", *self.headers))

    def answer(self) -> tuple[bytes, dict]:
        head, body = read_answer(self.sock)
        answer = json.loads(body)
        if head.startswith(b"HTTP/1.1 200"):
            self.cursor = answer["cursor"]
            self.received += [message["data"] for message in answer["messages"]]
        return head, answer


def lane_relay(relay, **config) -> Relay:
    return relay(access_log=False, **config)


def in_lane(server: Relay, count: int, channel: str = "news", *headers: str, **params
            ) -> list[Poller]:
    """``count`` pollers, each answered once on its connection (the full way) and asking
    again: their repeats wait in the channel's group."""
    sock = server.connect()
    sock.sendall(server.request(f"/poll/{channel}?timeout=0", *headers))
    cursor = json.loads(read_answer(sock)[1])["cursor"]
    sock.close()
    pollers = [Poller(server, channel, cursor, *headers, **params) for _ in range(count)]
    for poller in pollers:
        poller.ask()
    wait_until(lambda: server.waiters() == count, timeout=20, message="polls not held")
    server.hub.publish(channel, "first")
    for poller in pollers:
        assert poller.answer()[1]["messages"][0]["data"] == "first"
        poller.ask()
    wait_until(lambda: server.waiters() == count, timeout=20, message="repeats not held")
    return pollers


def test_caught_up_repeats_wait_on_one_subscription_and_share_every_answer(relay):
    server = lane_relay(relay)
    pollers = in_lane(server, 50)
    # one held stream, one subscription of the hub, for the 50 polls (a poll each before)
    assert len(server.hub.streams) == 1
    assert server.hub.counts()["channels"] == 1
    delivered = server.hub.stats.delivered
    for index in range(5):
        server.hub.publish("news", f"m{index}")
        bodies = {json.dumps(poller.answer()[1]) for poller in pollers}
        assert len(bodies) == 1, "every poll woken together gets the same answer"
        for poller in pollers:
            poller.ask()
        wait_until(lambda: server.waiters() == 50, timeout=20, message="repeats not held")
    for poller in pollers:
        assert poller.received == ["first", "m0", "m1", "m2", "m3", "m4"]
    assert server.hub.stats.delivered - delivered == 5 * 50  # as the dashboard counts them


def test_a_repeat_from_behind_gets_what_it_missed_at_once_from_history(relay):
    server = lane_relay(relay)
    ahead, behind = in_lane(server, 2)
    server.hub.publish("news", "m0")
    ahead.answer()
    behind.answer()
    ahead.ask()
    wait_until(lambda: server.waiters() == 1, timeout=10, message="repeat not held")
    server.hub.publish("news", "m1")  # while `behind` has not asked again
    assert ahead.answer()[1]["messages"][0]["data"] == "m1"
    ahead.ask()
    wait_until(lambda: server.waiters() == 1, timeout=10, message="repeat not held")
    behind.ask()  # from m0, while the group waits from m1
    head, answer = behind.answer()
    assert head.startswith(b"HTTP/1.1 200") and [m["data"] for m in answer["messages"]] == ["m1"]
    server.hub.publish("news", "m2")
    assert ahead.answer()[1]["messages"][0]["data"] == "m2"
    assert ahead.received == [*behind.received, "m2"]


@pytest.mark.parametrize(("since", "status", "error"), [
    ("12-34", "200", None),  # an id written otherwise: the full way reads history from it
    ("zz", "400", "invalid_since"),
])
def test_a_repeat_whose_cursor_is_not_the_latest_id_goes_the_full_way(relay, since, status,
                                                                     error):
    server = lane_relay(relay)
    (poller,) = in_lane(server, 1)
    server.hub.publish("news", "m0")
    poller.answer()
    poller.cursor = since
    poller.ask()
    head, answer = poller.answer()
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert answer.get("error") == error


def test_a_token_that_expires_between_two_polls_is_refused_on_the_next(relay):
    server = lane_relay(relay, WSRELAY_REQUIRE_TOKEN=True)
    issued = time.time()
    token = server.state.tokens.issue("news", ttl=1.5)
    (poller,) = in_lane(server, 1, "news", f"Authorization: Bearer {token}")
    server.hub.publish("news", "before")  # answered while the token is still valid
    assert poller.answer()[1]["messages"][0]["data"] == "before"
    time.sleep(max(0.0, issued + 1.6 - time.time()))
    poller.ask()
    head, answer = poller.answer()
    assert head.startswith(b"HTTP/1.1 401") and answer["error"] == "token_expired"


def test_repeats_count_against_the_connect_rate_and_the_address(relay):
    server = lane_relay(relay, WSRELAY_LIMITS_EXEMPT=(), WSRELAY_CONNECT_RATE=0.001,
                        WSRELAY_CONNECT_BURST=4, WSRELAY_MAX_CONNECTIONS_PER_IP=100)
    (poller,) = in_lane(server, 1)  # two admissions: the cursor's and the first poll's
    assert server.state.limits.counts()["streams"] == 1
    server.hub.publish("news", "m0")  # the third
    poller.answer()
    poller.ask()  # the fourth
    wait_until(lambda: server.waiters() == 1, timeout=10, message="repeat not held")
    server.hub.publish("news", "m1")
    poller.answer()
    poller.ask()  # the fifth: over the burst, as the full way counts it
    head, answer = poller.answer()
    assert head.startswith(b"HTTP/1.1 429") and answer["error"] == "connect_rate_limited"
    assert server.state.limits.counts()["streams"] == 0


def test_a_repeat_whose_client_hangs_up_frees_its_place_and_leaves_the_others(relay):
    server = lane_relay(relay)
    stays, leaves = in_lane(server, 2)
    leaves.sock.close()
    wait_until(lambda: server.waiters() == 1, timeout=10, message="the place was not freed")
    assert server.state.limits.counts()["streams"] == 1
    assert server.hub.stats.connections["poll"] == 1
    server.hub.publish("news", "m0")
    assert stays.answer()[1]["messages"][0]["data"] == "m0"
    wait_until(lambda: server.state.limits.counts()["streams"] == 0, timeout=10,
               message="the answered poll kept its place")
    assert len(server.hub.streams) == 0 and server.hub.counts()["channels"] == 0


def test_a_repeat_times_out_alone_with_nothing_and_its_connection_goes_on(relay):
    server = lane_relay(relay)
    (poller,) = in_lane(server, 1, timeout=1)
    started = time.monotonic()
    _, answer = poller.answer()
    assert 0.8 <= time.monotonic() - started < 5
    assert answer["messages"] == [] and answer["cursor"] == poller.cursor
    assert server.hub.counts()["channels"] == 0, "the group ended with its last poll"
    poller.ask()
    server.hub.publish("news", "m0")
    assert poller.answer()[1]["messages"][0]["data"] == "m0"


def test_shutdown_answers_the_repeats_and_closes_their_connections(relay):
    server = lane_relay(relay)
    pollers = in_lane(server, 3)
    server.state.shutdown(timeout=5)
    for poller in pollers:
        head, answer = poller.answer()
        assert b"Connection: close" in head and answer["messages"] == []
        assert closed(poller.sock, within=5)


def test_a_connect_hook_added_later_sees_the_next_repeat(relay):
    server = lane_relay(relay)
    (poller,) = in_lane(server, 1)
    server.hub.publish("news", "m0")
    poller.answer()
    seen = []
    server.state.relay.connect_hook(lambda request, channel, claims, action: seen.append(
        request.args["since"]))
    poller.ask()
    wait_until(lambda: seen, timeout=10, message="the hook did not run")
    assert seen == [poller.cursor]
    server.hub.publish("news", "m1")
    assert poller.answer()[1]["messages"][0]["data"] == "m1"


def test_with_an_access_log_every_repeat_is_logged_with_its_cursor_and_no_token(relay):
    server = relay()  # writes access lines
    token = server.state.tokens.issue("news")
    pollers = in_lane(server, 2, "news", token=token)
    assert len(server.hub.streams) == 1, "the repeats wait in the group"
    cursor = pollers[0].cursor  # the repeats' since
    server.hub.publish("news", "m0")
    for poller in pollers:
        poller.answer()
    lines = [line for line in server.log.getvalue().splitlines() if "/poll/news" in line]
    assert len(lines) == 1 + 2 + 2  # the cursor's, the first polls', the repeats'
    repeats = lines[-2:]
    assert all(f"since={cursor}&" in line and '" 200 ' in line for line in repeats), repeats
    assert all("token=[redacted]" in line for line in lines[1:])  # the cursor's has none
    assert token not in server.log.getvalue()


def test_a_pipelined_repeat_waits_for_the_answer_before_it(relay):
    server = lane_relay(relay)
    (poller,) = in_lane(server, 1)
    cursor = poller.cursor
    server.hub.publish("news", "m0")
    poller.answer()
    poller.ask()
    poller.cursor = cursor  # a second poll behind the first, from the older cursor
    poller.ask()
    wait_until(lambda: server.waiters() == 1, timeout=10, message="repeat not held")
    server.hub.publish("news", "m1")
    first, second = (json.loads(body) for _, body in read_answers(poller.sock, 2))
    assert [m["data"] for m in first["messages"]] == ["m1"]
    assert [m["data"] for m in second["messages"]] == ["m0", "m1"]


def test_a_new_connections_first_poll_goes_the_full_way_beside_the_group(relay):
    server = lane_relay(relay)
    (poller,) = in_lane(server, 1)
    other = Poller(server, "news", poller.cursor)
    other.ask()
    wait_until(lambda: server.waiters() == 2, timeout=10, message="polls not held")
    assert len(server.hub.streams) == 2  # the group, and the new connection's own poll
    server.hub.publish("news", "m0")
    assert poller.answer()[1] == other.answer()[1]


def test_grouped_polls_leave_nothing_for_the_cyclic_collector(relay):
    """A group, its polls' lanes and their parked connections go by reference counting once
    they are answered or their clients leave."""
    server = lane_relay(relay)

    def rounds(count: int) -> None:
        pollers = in_lane(server, count, "cycles")
        server.hub.publish("cycles", "one")
        for poller in pollers:
            poller.answer()
            poller.ask()
        wait_until(lambda: server.waiters() == count, timeout=10)
        for poller in pollers[: count // 2]:
            poller.sock.close()
        wait_until(lambda: server.waiters() == count - count // 2, timeout=10)
        for poller in pollers[count // 2:]:
            poller.sock.close()
        wait_until(lambda: server.waiters() == 0, timeout=10)
        time.sleep(0.1)

    left = left_for_the_collector(rounds, 4, 40)
    assert not left & {"ParkedConnection", "PollLane", "PollGroup", "PollWaiter", "Lane",
                       "Subscription", "RelayHandler"}, left


def test_on_redis_every_repeat_goes_the_full_way(relay, redis_server):
    """A group would begin with a history read, which waits for Redis: not in the event loop."""
    server = lane_relay(relay, WSRELAY_BROKER_URL=redis_server.url)
    pollers = in_lane(server, 3, "news")
    assert len(server.hub.streams) == 3  # a waiter each, no group
    for index in range(3):
        server.hub.publish("news", f"m{index}")
        for poller in pollers:
            poller.answer()
            poller.ask()
        wait_until(lambda: server.waiters() == 3, timeout=10, message="polls not held")
    assert all(poller.received == ["first", "m0", "m1", "m2"] for poller in pollers)


def test_a_slow_reader_in_a_group_gets_its_answer_whole_and_the_others_theirs_at_once(relay):
    """A reader whose socket takes less than its answer: the event loop sends what it takes,
    a greenlet the rest; the others' answers do not wait for it."""
    server = lane_relay(relay)
    pollers = in_lane(server, 20)
    slow = pollers[0]
    (parked,) = [obj for obj in gc.get_objects()
                 if isinstance(obj, ParkedConnection) and obj.sock.fileno() != -1
                 and obj.sock.getpeername() == slow.sock.getsockname()]
    parked.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.hub.publish("news", "x" * 3_000_000)  # not read by the slow one for now
    for poller in pollers[1:]:
        assert len(poller.answer()[1]["messages"][0]["data"]) == 3_000_000
        poller.ask()
    wait_until(lambda: server.waiters() == 19, timeout=10, message="repeats not held")
    server.hub.publish("news", "next")
    for poller in pollers[1:]:
        assert poller.answer()[1]["messages"][0]["data"] == "next"
    head, answer = slow.answer()
    assert head.startswith(b"HTTP/1.1 200") and len(answer["messages"][0]["data"]) == 3_000_000
    slow.ask()  # from the big one: "next" waits for it in history
    assert slow.answer()[1]["messages"][0]["data"] == "next"
