"""The broker's reads and writes on real (gevent) sockets: a read waits for what arrives, a
shutdown ends it, a send gets everything out however full the buffer, a TLS-like socket
reads its own way."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

from wsrelay.broker.redis.sockets import receive_into, send_all


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    assert type(left) is gevent.socket.socket  # the suite is gevent-patched, like a worker
    yield left, right
    left.close()
    right.close()


def test_a_read_waits_for_what_arrives_and_takes_all_that_came(pair):
    left, right = pair
    buffer = bytearray(1024)
    gevent.spawn_later(0.05, right.sendall, b"late")
    assert receive_into(left, buffer) == 4 and buffer[:4] == b"late"
    right.sendall(b"one")
    right.sendall(b"two")
    gevent.sleep(0.01)
    assert receive_into(left, buffer) == 6 and buffer[:6] == b"onetwo"


def test_a_shutdown_ends_a_waiting_read(pair):
    """The watchdogs shut a silent connection down: the read in progress fails, as gevent's
    own read does (the connection then starts over)."""
    left, _ = pair
    gevent.spawn_later(0.05, left.shutdown, socket.SHUT_RDWR)
    with gevent.Timeout(5), pytest.raises(OSError):
        receive_into(left, bytearray(16))


def test_a_closed_peer_reads_as_nothing(pair):
    left, right = pair
    right.close()
    assert receive_into(left, bytearray(16)) == 0


def test_a_send_larger_than_the_socket_buffer_gets_all_out(pair):
    left, right = pair
    data = bytes(range(256)) * 16_384  # 4 MiB: many times the buffer
    received = bytearray()

    def read_slowly():
        while len(received) < len(data):
            gevent.sleep(0.001)
            received.extend(right.recv(65536))

    reader = gevent.spawn(read_slowly)
    send_all(left, data)
    reader.join(timeout=30)
    assert bytes(received) == data


def test_a_socket_of_another_kind_reads_as_gevent_reads_it():
    """A TLS socket may hold decrypted bytes with nothing left to read on its own socket:
    it is read by its own ``recv_into``, never waited on first."""

    class Buffered:
        def __init__(self):
            self.held = b"already decrypted"

        def recv_into(self, buffer):
            size = len(self.held)
            buffer[:size] = self.held
            return size

    buffer = bytearray(64)
    with gevent.Timeout(1):  # nothing arrives on the socket: a wait would not end
        assert receive_into(Buffered(), buffer) == len(b"already decrypted")
