import pytest

from wsrelay.origins import canonical_origin, origin_allowed, own_origin

HTTP = own_origin("http", "relay.example:5000")
HTTPS = own_origin("https", "relay.example")


@pytest.mark.parametrize("origin,own,allowed,ok", [
    (None, HTTP, (), True),                                   # not a browser
    ("http://relay.example:5000", HTTP, (), True),            # our own origin
    ("http://RELAY.example:5000", HTTP, (), True),
    ("https://relay.example:5000", HTTP, (), False),          # TLS page on a plain-HTTP server
    ("ws://relay.example:5000", HTTP, (), False),             # no page has a ws: origin
    ("http://relay.example:5001", HTTP, (), False),           # another port is another origin
    ("http://relay.example", HTTP, (), False),
    ("https://relay.example", HTTPS, (), True),
    ("https://relay.example:443", HTTPS, (), True),           # the default port, spelled out
    ("http://relay.example", HTTPS, (), False),               # a plain page on a TLS server
    ("http://relay.example:443", HTTPS, (), False),
    ("http://evil.example", HTTP, (), False),
    ("null", HTTP, (), False),
    ("http://relay.example:5000/path", HTTP, (), False),      # not an origin
    ("http://user@relay.example:5000", HTTP, (), False),
    ("http://relay.example:99999", HTTP, (), False),
    ("garbage", HTTP, (), False),
    ("http://app.example", HTTP, ("http://app.example",), True),
    ("http://app.example", HTTP, ("http://APP.example:80/",), True),   # entries normalised
    ("https://app.example", HTTP, ("http://app.example",), False),
    ("http://app.example:8080", HTTP, ("http://app.example",), False),
    ("chrome-extension://abc", HTTP, ("chrome-extension://abc",), True),
    ("http://evil.example", HTTP, ("*",), True),
    ("null", HTTP, ("*",), True),
])
def test_origin_rules(origin, own, allowed, ok):
    assert origin_allowed(origin, own, allowed) is ok


@pytest.mark.parametrize("scheme,host,own", [
    ("http", "relay.example:5000", "http://relay.example:5000"),
    ("http", "relay.example:80", "http://relay.example"),
    ("https", "Relay.Example:443", "https://relay.example"),
    ("https", "relay.example:80", "https://relay.example:80"),
    ("http", "[::1]:5000", "http://[::1]:5000"),
    ("http", "127.0.0.1", "http://127.0.0.1"),
    ("http", "", None),
    ("http", "bad host:x", None),
])
def test_own_origin_is_the_canonical_scheme_host_and_port(scheme, host, own):
    assert own_origin(scheme, host) == own


def test_an_origin_that_cannot_be_parsed_is_none():
    assert canonical_origin("http://[::1") is None
    assert canonical_origin("http://a.example?x=1") is None
    assert canonical_origin("HTTPS://A.example:443") == "https://a.example"
