"""Keep-alive connections waiting for their next request, ended when the server stops."""


import gevent

from wsrelay.server.keep_alive import end_keep_alive, keep_alive


class App:
    """A WSGI application stand-in: only its identity matters here."""


def test_ending_wakes_a_connection_waiting_for_its_next_request(pair):
    server, _ = pair
    app = App()
    connections = keep_alive(app)

    def wait_for_request() -> bytes:
        with connections.waiting(server):
            return server.recv(100)

    waiting = gevent.spawn(wait_for_request)
    gevent.sleep(0.1)
    assert not waiting.ready()
    end_keep_alive(app)
    waiting.join(1)
    assert waiting.ready(), "the wait was not woken"
    assert isinstance(waiting.exception, OSError) or waiting.value == b""
    assert keep_alive(app).ending


def test_each_application_ends_on_its_own():
    stopping, serving = App(), App()
    end_keep_alive(stopping)
    assert keep_alive(stopping).ending
    assert not keep_alive(serving).ending


def test_a_connection_that_waits_no_more_is_left_alone(pair):
    server, client = pair
    app = App()
    with keep_alive(app).waiting(server):
        pass
    end_keep_alive(app)
    client.sendall(b"GET / HTTP/1.1\r\n")
    assert server.recv(100) == b"GET / HTTP/1.1\r\n"
