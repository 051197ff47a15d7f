"""``/ws/<channel>`` against a real server with real clients."""

import socket

import gevent
import pytest
import requests

from tests.support import (
    Closed,
    Refused,
    client_frame,
    handshake_request,
    publish,
    raw_websocket,
    read_http_head,
    wait_until,
)


def test_text_and_binary_reach_every_subscriber_sender_included(server, channel):
    with server.ws(f"/ws/{channel}") as a, server.ws(f"/ws/{channel}") as b:
        a.send("héllo ✓")
        a.send(bytes(range(256)))
        for client in (a, b):
            assert client.recv(timeout=5) == "héllo ✓"
            assert client.recv(timeout=5) == bytes(range(256))


def test_echo_0_leaves_only_the_sender_out(server, channel):
    with server.ws(f"/ws/{channel}?echo=0") as sender, server.ws(f"/ws/{channel}") as other:
        sender.send("one")
        sender.send("two")
        assert other.recv(timeout=5) == "one"
        assert other.recv(timeout=5) == "two"
        requests.post(f"{server.url}/publish/{channel}", data="from http", timeout=5)
        assert sender.recv(timeout=5) == "from http"  # not its own: delivered


def test_channels_are_separate(server, channel):
    with server.ws(f"/ws/{channel}-a") as a, server.ws(f"/ws/{channel}-b") as b:
        a.send("for a")
        b.send("for b")
        assert a.recv(timeout=5) == "for a"
        assert b.recv(timeout=5) == "for b"
        with pytest.raises(TimeoutError):
            a.recv(timeout=0.3)


def test_many_clients_many_channels(server, channel):
    clients = {f"{channel}-{c}": [server.ws(f"/ws/{channel}-{c}") for _ in range(5)]
               for c in range(6)}
    try:
        for name, members in clients.items():
            for i, member in enumerate(members):
                member.send(f"{name}/{i}")
        for name, members in clients.items():
            expected = {f"{name}/{i}" for i in range(5)}
            for member in members:
                assert {member.recv(timeout=5) for _ in range(5)} == expected
    finally:
        for members in clients.values():
            for member in members:
                member.close()


def test_since_replays_then_goes_live_with_no_gap_and_no_duplicate(server, channel):
    ids = [requests.post(f"{server.url}/publish/{channel}", data=f"m{i}", timeout=5).json()["id"]
           for i in range(10)]
    with server.ws(f"/ws/{channel}?since={ids[3]}") as late:
        requests.post(f"{server.url}/publish/{channel}", data="live", timeout=5)
        received = [late.recv(timeout=5) for _ in range(7)]
        assert received == [f"m{i}" for i in range(4, 10)] + ["live"]
        with pytest.raises(TimeoutError):
            late.recv(timeout=0.3)


def test_since_while_publishing_concurrently_loses_nothing(server, channel):
    """Resume while another client publishes as fast as it can: every message exactly once."""
    with server.ws(f"/ws/{channel}") as publisher:
        publisher.send("start")
        assert publisher.recv(timeout=5) == "start"
        first = requests.get(f"{server.url}/poll/{channel}", timeout=5,
                             params={"since": "0000000000000-0000000000", "timeout": 0})
        cursor = first.json()["cursor"]
        for i in range(300):
            publisher.send(f"n{i}")
            if i == 100:
                resumed = server.ws(f"/ws/{channel}?since={cursor}")
        got = [resumed.recv(timeout=5) for _ in range(300)]
        resumed.close()
    assert got == [f"n{i}" for i in range(300)]


def closed_at_once(server, path: str) -> Closed:
    """Connect to ``path``; the server must close before sending any message."""
    with server.ws(path) as client, pytest.raises(Closed) as closed:
        client.recv(timeout=5)
    return closed.value


def test_a_gap_history_cannot_fill_closes_with_4410_and_the_id_to_resume_from(
    make_server, channel
):
    server = make_server(env={"WSRELAY_HISTORY_SIZE": "3"})
    ids = [publish(server, channel, f"m{i}") for i in range(6)]  # m0..m2 are gone
    gap = closed_at_once(server, f"/ws/{channel}?since={ids[0]}")
    assert gap.code == 4410
    assert gap.reason.startswith("messages were missed: resume with since=")
    resume = gap.reason.rsplit("since=", 1)[1]
    # A client that reconnects with the old id forever is told the same, every time.
    assert closed_at_once(server, f"/ws/{channel}?since={ids[1]}").reason == gap.reason
    with server.ws(f"/ws/{channel}?since={resume}") as resumed:
        assert [resumed.recv(timeout=5) for _ in range(3)] == ["m3", "m4", "m5"]
        publish(server, channel, "live")
        assert resumed.recv(timeout=5) == "live"
    # Retained now: m4, m5, live. From m3 nothing is missing: replayed as ever.
    with server.ws(f"/ws/{channel}?since={ids[3]}") as no_gap:
        assert [no_gap.recv(timeout=5) for _ in range(3)] == ["m4", "m5", "live"]


def test_a_cursor_from_before_a_restart_closes_with_4410(make_server, channel):
    first = make_server()
    stale = publish(first, channel, "before")
    first.stop()
    second = make_server(port=first.port)  # the memory broker starts a new epoch
    gap = closed_at_once(second, f"/ws/{channel}?since={stale}")
    assert gap.code == 4410
    resume = gap.reason.rsplit("since=", 1)[1]
    with second.ws(f"/ws/{channel}?since={resume}") as resumed:
        publish(second, channel, "after")
        assert resumed.recv(timeout=5) == "after"


def test_bad_channel_is_refused_with_400_before_the_upgrade(server):
    for path in ("/ws/bad$name", "/ws/" + "x" * 129, "/ws/a/b"):
        with pytest.raises(Refused) as info:
            server.ws(path)
        assert info.value.status == 400
        assert b"invalid_channel" in info.value.body


def test_bad_since_is_refused_with_400(server, channel):
    with pytest.raises(Refused) as info:
        server.ws(f"/ws/{channel}?since=yesterday")
    assert info.value.status == 400


def test_plain_get_answers_426_json(server, channel):
    response = requests.get(f"{server.url}/ws/{channel}", timeout=5)
    assert response.status_code == 426
    assert response.json()["error"] == "upgrade_required"
    assert response.headers["Upgrade"] == "websocket"


def test_handshake_errors_are_http_errors(server, channel):
    for headers, status in (({"Sec_WebSocket_Version": "8"}, 426),
                            ({"Sec_WebSocket_Key": "short"}, 400)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(handshake_request(f"/ws/{channel}", server.port, **headers))
            assert read_http_head(sock)[0] == status


def test_foreign_origin_is_refused_before_the_upgrade(server, channel):
    with pytest.raises(Refused) as info:
        server.ws(f"/ws/{channel}", origin="http://evil.example")
    assert info.value.status == 403
    with server.ws(f"/ws/{channel}", origin=f"http://127.0.0.1:{server.port}") as ok:
        ok.send("same origin")
        assert ok.recv(timeout=5) == "same origin"


def test_server_pings_and_answers_pings(make_server, channel):
    server = make_server(env={"WSRELAY_PING_INTERVAL": "0.3"})
    with raw_websocket(server.port, f"/ws/{channel}") as (sock, rest):
        sock.settimeout(5)
        data = rest
        while len(data) < 2:
            data += sock.recv(100)
        assert data[0] == 0x89, "a ping frame"


def test_abruptly_dropped_clients_are_pruned(server, channel):
    sockets = []
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(handshake_request(f"/ws/{channel}", server.port))
        assert read_http_head(sock)[0] == 101
        sockets.append(sock)
    wait_until(lambda: server.health()["subscribers"] >= 5)
    for sock in sockets:  # RST, no close frame
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    with server.ws(f"/ws/{channel}") as survivor:
        survivor.send("still here")
        assert survivor.recv(timeout=5) == "still here"
    wait_until(lambda: server.health()["subscribers"] == 0, message="dropped clients not pruned")


def test_silent_half_open_peer_is_dropped_by_heartbeat(make_server, channel):
    server = make_server(env={"WSRELAY_PING_INTERVAL": "0.3", "WSRELAY_PING_TIMEOUT": "0.3"})
    with raw_websocket(server.port, f"/ws/{channel}") as (sock, _rest):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        wait_until(lambda: server.health()["subscribers"] == 1)
        # never read, never answer: the server must give up on us
        wait_until(lambda: server.health()["subscribers"] == 0, timeout=10,
                   message="silent peer kept")


def test_client_close_is_answered_with_the_same_code(server, channel):
    with server.ws(f"/ws/{channel}") as client:
        client.close(code=4000, reason="bye")
        assert (client.close_code, client.close_reason) == (4000, "bye")


def test_slow_reader_never_delays_others(make_server, channel):
    """One client never reads while 400 messages of 32 KiB go out: every other subscriber
    gets all 400, and the slow one is dropped once its buffer is full (see
    tests/test_connection.py for the 1013 close frame it is sent)."""
    server = make_server(env={"WSRELAY_SUBSCRIBER_BUFFER": "2097152",
                              "WSRELAY_MAX_MESSAGE_SIZE": "65536",
                              "WSRELAY_CLOSE_TIMEOUT": "1"})
    payload = [bytes([i % 251]) * 32768 for i in range(400)]
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    slow.sendall(handshake_request(f"/ws/{channel}", server.port))
    assert read_http_head(slow)[0] == 101
    readers = [server.ws(f"/ws/{channel}") for _ in range(3)]
    try:
        progress = [0] * len(readers)

        def read_all(index, reader):
            got = []
            for _ in range(400):
                got.append(reader.recv(timeout=20))
                progress[index] += 1
            return got

        receiving = [gevent.spawn(read_all, i, r) for i, r in enumerate(readers)]
        with server.ws(f"/ws/{channel}?echo=0") as publisher:
            for i, data in enumerate(payload):
                # readers that keep up: at most 32 messages (1 MiB) behind the publisher
                wait_until(lambda i=i: min(progress) >= i - 32, timeout=20, interval=0.001)
                publisher.send(data)
            for task in receiving:
                assert task.get(timeout=60) == payload
        wait_until(lambda: server.health()["subscribers"] == 3, message="slow reader kept")
    finally:
        slow.close()
        for reader in readers:
            reader.close()


def test_message_over_the_limit_is_closed_with_1009(make_server, channel):
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000",
                              "WSRELAY_SUBSCRIBER_BUFFER": "100000"})
    with server.ws(f"/ws/{channel}") as client:
        client.send("x" * 1001)
        with pytest.raises(Closed) as info:
            client.recv(timeout=5)
        assert info.value.code == 1009


def test_invalid_utf8_is_closed_with_1007(server, channel):
    with raw_websocket(server.port, f"/ws/{channel}") as (sock, rest):
        sock.sendall(client_frame(1, b"\xff\xfe"))
        data = rest
        while len(data) < 4:
            data += sock.recv(100)
        assert data[0] == 0x88 and int.from_bytes(data[2:4], "big") == 1007
