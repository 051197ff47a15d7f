"""Long-polls held without a greenlet (server/parked.py), in this process: a real server and
real sockets, the connections between two requests counted in greenlets."""

from __future__ import annotations

import gc
import json
import socket
import time

from tests.support import (
    Relay,
    closed,
    left_for_the_collector,
    live_greenlets,
    read_answer,
    read_answers,
    wait_until,
)
from wsrelay.server.parked import ParkedConnection


def hold(relay: Relay, channel: str, count: int, **params) -> list[socket.socket]:
    """``count`` keep-alive connections, each with a poll the server holds."""
    cursor = relay.cursor(channel)
    query = "&".join(f"{key}={value}" for key, value in {"since": cursor, "timeout": 30,
                                                          **params}.items())
    before = relay.waiters()
    socks = []
    for _ in range(count):
        sock = relay.connect()
        sock.sendall(relay.request(f"/poll/{channel}?{query}"))
        socks.append(sock)
    wait_until(lambda: relay.waiters() == before + count, timeout=20,
               message="the server did not hold the polls")
    return socks


def messages(body: bytes) -> list[str]:
    return [message["data"] for message in json.loads(body)["messages"]]


def test_a_thousand_held_polls_and_their_keep_alive_connections_hold_no_greenlet(relay):
    server = relay()
    before = live_greenlets()
    socks = hold(server, "news", 1000)
    assert live_greenlets() - before < 5, "no greenlet per held poll"
    server.hub.publish("news", "first")
    answers = [read_answer(sock) for sock in socks]
    assert all(messages(body) == ["first"] for _, body in answers)
    assert answers[0][0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert live_greenlets() - before < 5, "none per connection waiting for its next request"
    cursor = json.loads(answers[0][1])["cursor"]
    for sock in socks:  # the next poll on each keep-alive connection is held again
        sock.sendall(server.request(f"/poll/news?since={cursor}&timeout=30"))
    wait_until(lambda: server.waiters() == 1000, timeout=20)
    wait_until(lambda: live_greenlets() - before < 5, timeout=5,
               message="the greenlets that read the second polls end once they are held")
    server.hub.publish("news", "second")
    assert all(messages(read_answer(sock)[1]) == ["second"] for sock in socks)
    for sock in socks:  # answered at once from history, in the event loop
        sock.sendall(server.request(f"/poll/news?since={cursor}&timeout=30"))
    assert all(messages(read_answer(sock)[1]) == ["second"] for sock in socks)
    assert live_greenlets() - before < 5, "none for a poll answered at once either"
    for sock in socks:
        sock.close()


def test_a_client_that_hangs_up_while_held_frees_its_place(relay):
    """Five places for streams and polls in the worker: five clients hang up while held, and
    five more are held at once after them; nothing is left of the first ones."""
    server = relay(WSRELAY_MAX_STREAMS=5)
    gone = hold(server, "news", 5)
    for sock in gone:
        sock.close()
    wait_until(lambda: server.waiters() == 0, timeout=5, message="the hang-ups were not noticed")
    socks = hold(server, "news", 5)  # a 503 (full) would not be held
    server.hub.publish("news", "after")
    assert all(messages(read_answer(sock)[1]) == ["after"] for sock in socks)


def test_a_page_after_a_held_poll_on_the_same_connection_is_served_by_pywsgi(relay):
    server = relay()
    (sock,) = hold(server, "news", 1)
    server.hub.publish("news", "one")
    assert messages(read_answer(sock)[1]) == ["one"]
    sock.sendall(server.request("/healthz"))
    head, body = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 200 OK") and json.loads(body)["status"] == "ok"
    sock.sendall(server.request("/poll/news?timeout=0"))  # and a poll again after it
    assert json.loads(read_answer(sock)[1])["messages"] == []


def test_pipelined_polls_are_answered_in_order_each_after_its_wait(relay):
    server = relay()
    sock = server.connect()
    held = server.request("/poll/news?timeout=0.3")
    started = time.monotonic()
    sock.sendall(held + held + server.request("/healthz"))
    first, second, page = read_answers(sock, 3)
    assert time.monotonic() - started >= 0.55, "each poll waited its own timeout"
    assert messages(first[1]) == messages(second[1]) == []
    assert json.loads(page[1])["status"] == "ok"


def test_a_request_pipelined_behind_a_held_poll_waits_for_its_answer(relay):
    server = relay()
    (sock,) = hold(server, "news", 1)
    sock.sendall(server.request("/healthz"))
    time.sleep(0.2)
    assert server.waiters() == 1, "the pipelined request does not end the held poll"
    server.hub.publish("news", "one")
    poll, page = read_answers(sock, 2)
    assert messages(poll[1]) == ["one"] and json.loads(page[1])["status"] == "ok"


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(relay):
    server = relay(WSRELAY_HTTP_IDLE_TIMEOUT=0.5)
    (idle, slow) = hold(server, "news", 2)
    server.hub.publish("news", "one")
    read_answer(idle)
    read_answer(slow)
    slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head begun, never ended
    started = time.monotonic()
    assert closed(idle, within=5)
    assert time.monotonic() - started < 2
    slow.settimeout(5)
    assert slow.recv(65536).startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 2, "the head was due within the idle timeout"


def test_the_poll_timeout_answers_a_held_poll_with_nothing_and_keeps_the_connection(relay):
    server = relay()
    (sock,) = hold(server, "news", 1, timeout=0.3)
    head, body = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 200 OK") and messages(body) == []
    assert b"Connection: close" not in head
    sock.sendall(server.request("/poll/news?timeout=0"))
    assert messages(read_answer(sock)[1]) == []


def test_a_held_poll_that_says_close_is_closed_after_its_answer(relay):
    server = relay()
    cursor = server.cursor("news")
    sock = server.connect()
    sock.sendall(server.request(f"/poll/news?since={cursor}&timeout=30", "Connection: close"))
    wait_until(lambda: server.waiters() == 1, timeout=5)
    server.hub.publish("news", "one")
    assert messages(read_answer(sock)[1]) == ["one"]
    assert closed(sock, within=5)


def test_shutdown_answers_held_polls_and_closes_their_connections(relay):
    server = relay()
    socks = hold(server, "news", 20)
    server.hub.publish("other", "x")
    server.state.shutdown(timeout=5)
    for sock in socks:
        head, body = read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"\r\nConnection: close\r\n" in head
        assert messages(body) == []
        assert closed(sock, within=5)


def test_held_polls_are_in_the_access_log_without_their_tokens(relay):
    server = relay(WSRELAY_SECRET_KEY="s" * 32)
    token = server.state.tokens.issue("news")
    (sock,) = hold(server, "news", 1, token=token)
    server.hub.publish("news", "one")
    assert messages(read_answer(sock)[1]) == ["one"]
    wait_until(lambda: "token=[redacted]" in server.log.getvalue(), timeout=5)
    lines = [line for line in server.log.getvalue().splitlines() if "since=" in line]
    assert len(lines) == 1 and " 200 " in lines[0] and token not in lines[0]


def test_held_polls_leave_nothing_for_the_cyclic_collector(relay):
    """A held poll's objects (its parked connection, watchers' callbacks, waiter) go by
    reference counting once it is answered or its client leaves."""
    server = relay()

    def rounds(count: int) -> None:
        socks = hold(server, "cycles", count)
        server.hub.publish("cycles", "one")
        for sock in socks:
            read_answer(sock)
        gone = hold(server, "cycles", count)
        for sock in gone:
            sock.close()
        wait_until(lambda: server.waiters() == 0, timeout=5)
        for sock in socks:
            sock.close()
        time.sleep(0.1)

    left = left_for_the_collector(rounds, 5, 50)
    assert not left & {"ParkedConnection", "HeldPoll", "OpenPoll", "PollWaiter", "Subscription",
                       "ClientRequest", "RelayHandler"}, left


def test_on_redis_held_polls_are_answered_timed_out_and_let_go_as_on_memory(relay, redis_server):
    """On Redis a poll's request is read in a greenlet (its history read waits for Redis), but
    it is still held without one; its timeout and its client's leaving let it go, the channel
    is unwatched, and the next poll on the same connection is answered by a publish."""
    server = relay(WSRELAY_BROKER_URL=redis_server.url)
    (warm,) = hold(server, "news", 1, timeout=0.1)  # the broker's listener and pool start
    read_answer(warm)
    before = live_greenlets()
    (sock,) = hold(server, "news", 1, timeout=0.3)
    assert live_greenlets() - before < 3
    assert messages(read_answer(sock)[1]) == []
    (gone,) = hold(server, "news", 1)
    gone.close()
    wait_until(lambda: server.waiters() == 0 and server.hub.counts()["channels"] == 0,
               timeout=5, message="the polls were not let go")
    cursor = server.cursor("news")
    sock.sendall(server.request(f"/poll/news?since={cursor}&timeout=30"))
    wait_until(lambda: server.waiters() == 1, timeout=5)
    server.hub.publish("news", "on redis")
    assert messages(read_answer(sock)[1]) == ["on redis"]


def test_an_answer_larger_than_the_socket_takes_goes_out_whole_and_the_connection_goes_on(relay):
    """3 MB of history for a client that reads late: the event loop sends what the socket
    takes, a greenlet the rest; the bystanders' polls are answered meanwhile."""
    server = relay()
    cursor = server.cursor("big")
    for n in range(3):
        server.hub.publish("big", str(n) * 1_000_000)
    sock = server.connect()
    sock.sendall(server.request("/poll/big?timeout=0"))  # its connection waits in a watcher
    read_answer(sock)
    (parked,) = [obj for obj in gc.get_objects() if isinstance(obj, ParkedConnection)]
    parked.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # the kernel takes less
    bystanders = hold(server, "news", 20)
    sock.sendall(server.request(f"/poll/big?since={cursor}&timeout=30"))  # read in the loop
    time.sleep(0.5)  # not read: the kernel's buffers take a few hundred KB of the 3 MB
    server.hub.publish("news", "meanwhile")
    assert all(messages(read_answer(other)[1]) == ["meanwhile"] for other in bystanders)
    head, body = read_answer(sock)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert [len(data) for data in messages(body)] == [1_000_000] * 3
    sock.sendall(server.request("/healthz"))
    assert json.loads(read_answer(sock)[1])["status"] == "ok"
