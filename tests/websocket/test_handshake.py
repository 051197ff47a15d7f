import base64

import pytest

from wsrelay.errors import ApiError
from wsrelay.websocket.handshake import (
    Deflate,
    accept_key,
    is_upgrade_request,
    negotiate_deflate,
    switching_protocols,
)


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


def test_switching_protocols_names_the_accepted_extension():
    response = switching_protocols(
        "abc", "wsrelay.v1", "permessage-deflate; server_no_context_takeover"
    )
    assert response.endswith(
        b"Sec-WebSocket-Protocol: wsrelay.v1\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
    )


def deflate(server=15, client=15, client_no_context_takeover=False):
    return Deflate(server, client, client_no_context_takeover)


# RFC 7692's own examples (section 7.1.x and 5), browsers' offers, and Autobahn's 13.x offers.
@pytest.mark.parametrize(("offer", "response", "agreed"), [
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover", deflate()),
    # Chromium and Firefox
    ("permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover", deflate()),
    # RFC 7692 7.1.1: asking for server_no_context_takeover is what wsrelay does anyway
    ("permessage-deflate; server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover", deflate()),
    ("permessage-deflate; client_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     deflate(client_no_context_takeover=True)),
    # RFC 7692 7.1.2.1: the server honours a smaller window
    ("permessage-deflate; server_max_window_bits=10",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", deflate(10)),
    ('permessage-deflate; server_max_window_bits="10"',  # a quoted value (RFC 7692 7.1)
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=10", deflate(10)),
    # RFC 7692 7.1.2.2: the client limits its own window
    ("permessage-deflate; client_max_window_bits=9",
     "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
     deflate(client=9)),
    # RFC 7692 5.2's example: the first offer zlib cannot honour (a 256-byte window), the
    # second taken
    ("permessage-deflate; client_max_window_bits; server_max_window_bits=8, "
     "permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover", deflate()),
    # Autobahn 13.7's offers: the first acceptable one is taken
    ("permessage-deflate; server_no_context_takeover; server_max_window_bits=9; "
     "client_max_window_bits, permessage-deflate; server_no_context_takeover, "
     "permessage-deflate",
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=9", deflate(9)),
    # other extensions are not wsrelay's: ignored
    ("x-webkit-deflate-frame, permessage-deflate",
     "permessage-deflate; server_no_context_takeover", deflate()),
])
def test_deflate_offers_are_answered_as_rfc_7692_says(offer, response, agreed):
    assert negotiate_deflate(offer) == (response, agreed)


@pytest.mark.parametrize("offer", [
    "",
    "x-webkit-deflate-frame",
    "permessage-deflate; unknown_parameter",                       # RFC 7692 7.1: decline
    "permessage-deflate; server_no_context_takeover=1",            # a value where none goes
    "permessage-deflate; server_max_window_bits",                  # a value is required
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=08",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",  # repeated
    "permessage-deflate; server_max_window_bits=8",                # zlib cannot do 256 bytes
])
def test_unacceptable_deflate_offers_are_declined(offer):
    assert negotiate_deflate(offer) is None


@pytest.mark.parametrize("header", ["permessage-deflate;;", "permessage-deflate; a=\"b", ",;"])
def test_a_malformed_extensions_header_fails_the_handshake(header):
    with pytest.raises(ApiError) as caught:
        negotiate_deflate(header)
    assert caught.value.status == 400
