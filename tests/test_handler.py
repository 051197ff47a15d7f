"""Both ways a request reaches the view: wsrelay's handler, and gevent-websocket's own."""

import pytest
from gevent.pywsgi import WSGIServer
from geventwebsocket.handler import WebSocketHandler

from tests.support import Closed, Refused, WSClient
from wsrelay import create_app
from wsrelay.handler import RelayHandler


def serve(handler_class):
    server = WSGIServer(("127.0.0.1", 0), create_app(), handler_class=handler_class, log=None)
    server.start()
    return server


@pytest.fixture(params=[RelayHandler, WebSocketHandler], ids=["relay", "stock"])
def handler_server(request):
    server = serve(request.param)
    yield request.param, f"ws://127.0.0.1:{server.server_port}"
    server.stop()


def test_both_handlers_relay(handler_server):
    _, url = handler_server
    with WSClient(f"{url}/ws/room") as a, WSClient(f"{url}/ws/room") as b:
        a.send("hi")
        assert b.recv() == "hi"
        a.send(b"\x00")
        assert b.recv() == b"\x00"


def test_refusal_is_http_with_relay_handler_and_close_1008_with_the_stock_one(handler_server):
    handler, url = handler_server
    if handler is RelayHandler:
        with pytest.raises(Refused) as refused:
            WSClient(f"{url}/ws/bad$channel")
        assert refused.value.status == 400
    else:
        client = WSClient(f"{url}/ws/bad$channel")
        with pytest.raises(Closed) as closed:
            client.recv()
        assert closed.value.code == 1008
        assert "channel" in closed.value.reason


def test_relay_handler_answers_ordinary_requests_normally():
    server = serve(RelayHandler)
    try:
        import requests

        response = requests.get(f"http://127.0.0.1:{server.server_port}/healthz", timeout=5)
        assert response.status_code == 200
        assert response.json()["status"] == "ok"
    finally:
        server.stop()
