"""A held long-poll or SSE stream notices its client leave, and gives its place back at once."""

from __future__ import annotations

import socket
import struct
import time

import gevent
import pytest
import requests
from gevent.event import Event

from tests.support import Bystander, wait_until
from wsrelay.transports.hangup import watch_hangup

#: Loopback addresses other than 127.0.0.1, which the per-IP limits do not exempt.
ATTACKERS = [f"127.0.0.{n}" for n in range(2, 22)]


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset instead of a FIN, as a crashing client or a middlebox does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# -- the watcher on its own, over real sockets ----------------------------------------------

@pytest.fixture
def tcp_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield server, client
    server.close()
    client.close()


def test_a_client_that_closes_is_gone_and_wakes_the_request(pair):
    server, client = pair
    wake = Event()
    with watch_hangup(server, wake) as hangup:
        assert not wake.wait(0.2) and not hangup.gone
        client.close()
        assert wake.wait(1)
        assert hangup.gone


def test_a_client_that_resets_is_gone(tcp_pair):
    server, client = tcp_pair
    wake = Event()
    with watch_hangup(server, wake) as hangup:
        reset(client)
        assert wake.wait(1)
        assert hangup.gone


def test_data_from_the_client_is_no_departure_and_stays_unread(pair):
    """A pipelined request is the next request's to read: the watch ends, the data stays."""
    server, client = pair
    wake = Event()
    with watch_hangup(server, wake) as hangup:
        client.sendall(b"GET /next HTTP/1.1\r\n")
        gevent.sleep(0.2)
        client.close()  # after data: not seen, the watch has ended
        assert not wake.wait(0.3)
        assert not hangup.gone
    assert server.recv(100) == b"GET /next HTTP/1.1\r\n"


def test_without_a_socket_nothing_is_watched():
    wake = Event()
    with watch_hangup(None, wake) as hangup:
        assert not wake.wait(0.1)
        assert not hangup.gone


# -- against a real server --------------------------------------------------------------

def held_request(server, path: str, source: str = "127.0.0.2") -> socket.socket:
    """A raw request for ``path`` from ``source``, sent and left waiting for its answer."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return sock


def waiters(server) -> int:
    return server.health()["waiters"]


@pytest.mark.parametrize("leave", ["close", "reset"])
@pytest.mark.parametrize("transport", ["poll", "sse"])
def test_a_held_request_whose_client_leaves_gives_its_place_back_at_once(
    make_server, channel, transport, leave
):
    """One place per address, the keep-alive far away: the place comes back within a second,
    not at the poll's timeout or the stream's next keep-alive."""
    server = make_server(env={"WSRELAY_MAX_CONNECTIONS_PER_IP": "1",
                              "WSRELAY_SSE_KEEPALIVE": "60"})
    path = f"/{transport}/{channel}?timeout=60"
    first = held_request(server, path)
    wait_until(lambda: waiters(server) == 1)
    second = held_request(server, f"/poll/{channel}?timeout=0")
    assert second.recv(100).startswith(b"HTTP/1.1 429 "), "the address holds its one place"
    second.close()
    left = time.monotonic()
    (reset if leave == "reset" else socket.socket.close)(first)
    wait_until(lambda: waiters(server) == 0, timeout=5)
    assert time.monotonic() - left < 1
    again = held_request(server, f"/poll/{channel}?timeout=0")
    try:
        assert again.recv(100).startswith(b"HTTP/1.1 200 "), "the place came back"
    finally:
        again.close()


def test_5000_aborted_long_polls_lock_nobody_out(make_server, channel):
    """5,000 long-polls from 20 addresses, each reset or closed right after it is sent.
    Held until their timeout they would fill the worker's 4,000 streams and every SSE
    stream and long-poll would be refused (503) for a minute. Noticed, they come and go:
    a bystander's long-polls and SSE streams are admitted throughout, and its WebSocket
    loses nothing."""
    server = make_server(env={"WSRELAY_MAX_STREAMS": "4000",
                              "WSRELAY_MAX_CONNECTIONS_PER_IP": "256",
                              "WSRELAY_SSE_KEEPALIVE": "60"})
    path = f"/poll/{channel}-held?timeout=60"
    answers: list[int] = []

    def attack(source: str, count: int) -> None:
        for n in range(count):
            sock = held_request(server, path, source)
            if n % 2:
                reset(sock)
            else:
                sock.close()

    def bystander_streams() -> None:
        """A long-poll and an SSE stream of the bystander, opened and left, every 100 ms."""
        while True:
            poll = requests.get(f"{server.url}/poll/{channel}", params={"timeout": 0},
                                timeout=10)
            with requests.get(f"{server.url}/sse/{channel}", stream=True,
                              timeout=10) as sse:
                answers.extend((poll.status_code, sse.status_code))
            gevent.sleep(0.1)

    with Bystander(server, channel) as bystander:
        streams = gevent.spawn(bystander_streams)
        started = time.monotonic()
        gevent.joinall([gevent.spawn(attack, source, 250) for source in ATTACKERS],
                       raise_error=True)
        attack_time = time.monotonic() - started
        wait_until(lambda: waiters(server) == 0, timeout=5,
                   message=f"{waiters(server)} aborted long-polls are still held")
        gevent.sleep(1)  # the bystander's streams go on after the attack
        assert not streams.dead, streams.exception
        streams.kill()
    refused = [status for status in answers if status != 200]
    assert len(answers) >= 10 and not refused, (
        f"the bystander was refused {len(refused)} of {len(answers)} times: {set(refused)}")
    # the server and this process share two cores with 5,000 requests' worth of work
    bystander.assert_served(p99=4.0)  # the unfixed server refused for 50 s
    assert server.health()["waiters"] == 0
    print(f"5000 aborted long-polls in {attack_time:.1f}s; bystander p99 "
          f"{bystander.p99() * 1000:.0f} ms over {len(bystander.sent)} messages")
