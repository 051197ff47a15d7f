import pytest

from wsrelay.origins import origin_allowed


@pytest.mark.parametrize("origin,allowed,ok", [
    (None, (), True),                                  # not a browser
    ("http://relay.example:5000", (), True),           # our own host
    ("https://RELAY.example:5000", (), True),
    ("http://evil.example", (), False),
    ("http://relay.example:5001", (), False),           # another port is another origin
    ("null", (), False),
    ("http://app.example", ("http://app.example",), True),
    ("http://evil.example", ("*",), True),
])
def test_origin_rules(origin, allowed, ok):
    assert origin_allowed(origin, "relay.example:5000", allowed) is ok
