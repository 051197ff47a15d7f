import base64

import pytest

from wsrelay.errors import ApiError
from wsrelay.websocket.handshake import accept_key, is_upgrade_request, switching_protocols


def environ(**overrides):
    base = {
        "REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "relay.example",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "keep-alive, Upgrade", "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_rfc_example_key():
    # RFC 6455 section 1.3
    assert accept_key(environ()) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_upgrade_detection_follows_tokens():
    assert is_upgrade_request(environ())
    assert not is_upgrade_request(environ(HTTP_CONNECTION="keep-alive"))
    assert not is_upgrade_request(environ(HTTP_UPGRADE="h2c"))


@pytest.mark.parametrize("overrides,status", [
    ({"HTTP_SEC_WEBSOCKET_VERSION": "8"}, 426),
    ({"HTTP_SEC_WEBSOCKET_VERSION": None}, 426),
    ({"HTTP_SEC_WEBSOCKET_KEY": None}, 400),
    ({"HTTP_SEC_WEBSOCKET_KEY": "not base64!"}, 400),
    ({"HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(b"x" * 15).decode()}, 400),
    ({"REQUEST_METHOD": "POST"}, 405),
    ({"SERVER_PROTOCOL": "HTTP/1.0"}, 400),
    ({"HTTP_HOST": None}, 400),
])
def test_bad_handshakes(overrides, status):
    with pytest.raises(ApiError) as info:
        accept_key(environ(**overrides))
    assert info.value.status == status
    if status == 426:
        assert info.value.headers["Sec-WebSocket-Version"] == "13"


def test_switching_protocols_response():
    response = switching_protocols("abc=", "wsrelay.v1")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: abc=\r\n" in response
    assert b"Sec-WebSocket-Protocol: wsrelay.v1\r\n" in response
    assert response.endswith(b"\r\n\r\n")
