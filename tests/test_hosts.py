import pytest

from wsrelay.hosts import host_allowed, host_name, is_loopback_name

LOOPBACK, PUBLIC = "127.0.0.1", "203.0.113.7"


@pytest.mark.parametrize("host,name", [
    ("relay.example:5000", "relay.example"),
    ("Relay.Example.", "relay.example"),
    ("[::1]:5000", "::1"),
    ("[::1]", "::1"),
    ("127.0.0.1:80", "127.0.0.1"),
    ("[::1", ""),
    ("", ""),
])
def test_host_name_drops_port_brackets_case_and_final_dot(host, name):
    assert host_name(host) == name


@pytest.mark.parametrize("name,loopback", [
    ("localhost", True), ("app.localhost", True), ("127.0.0.1", True), ("127.9.9.9", True),
    ("::1", True), ("::ffff:127.0.0.1", True), ("localhost.example", False),
    ("evil.example", False), ("10.0.0.1", False), ("", False),
])
def test_loopback_names(name, loopback):
    assert is_loopback_name(name) is loopback


@pytest.mark.parametrize("name,allowed,local,ok", [
    # No allow-list: on loopback only loopback names (DNS rebinding), elsewhere any name.
    ("localhost", (), LOOPBACK, True),
    ("127.0.0.1", (), "::ffff:127.0.0.1", True),
    ("::1", (), "::1", True),
    ("evil.example", (), LOOPBACK, False),
    ("evil.example", (), "::1", False),
    ("", (), LOOPBACK, False),
    ("relay.example", (), PUBLIC, True),
    ("relay.example", (), "/run/wsrelay.sock", True),                 # a Unix socket
    # A list, as Django's ALLOWED_HOSTS.
    ("relay.example", ("relay.example",), PUBLIC, True),
    ("relay.example", ("RELAY.example:443",), PUBLIC, True),
    ("evil.example", ("relay.example",), PUBLIC, False),
    ("localhost", ("relay.example",), LOOPBACK, False),                 # the list is the list
    ("example.com", (".example.com",), PUBLIC, True),
    ("a.b.example.com", (".example.com",), PUBLIC, True),
    ("badexample.com", (".example.com",), PUBLIC, False),
    ("::1", ("::1",), LOOPBACK, True),
    ("::1", ("[::1]",), LOOPBACK, True),
    ("anything", ("*",), LOOPBACK, True),
])
def test_allowed_hosts(name, allowed, local, ok):
    assert host_allowed(name, allowed, local) is ok
