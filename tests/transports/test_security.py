"""Origins, tokens, the connect hook and the limits, on every transport, against real servers
with real clients. Every refusal must come before any upgrade, as an HTTP status."""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import os
import socket
import subprocess
import time
import types
from collections import Counter
from typing import NamedTuple

import gevent
import pytest
import requests
from gevent.pywsgi import WSGIServer

import wsrelay
from tests.support import (
    PYTHON,
    ROOT,
    Bystander,
    Closed,
    Refused,
    ServerProcess,
    WSClient,
    client_frame,
    free_port,
    handshake_request,
    publish,
    read_http_head,
    server_frames,
    wait_until,
)
from tests.transports.test_websocket_json import JsonClient
from wsrelay.auth import Tokens
from wsrelay.config import ConfigError
from wsrelay.ids import MessageId
from wsrelay.server.handler import RelayHandler

pytestmark = pytest.mark.e2e  # its tests start processes (servers, manage.py) themselves

SECRET = "tests-share-this-secret-with-the-server-0123456789"
TOKENS = Tokens(SECRET)
TRANSPORTS = ["ws", "sse", "poll", "publish"]
ADMITTED = {"ws": 101, "sse": 200, "poll": 200, "publish": 200}
EVIL = {"Origin": "http://evil.example"}
_addresses = itertools.count(1)


class Outcome(NamedTuple):
    status: int
    error: str | None
    message: str | None
    retry_after: str | None


def attempt(server, transport: str, channel: str, *, token: str | None = None,
            headers: dict[str, str] | None = None) -> Outcome:
    """Open ``transport`` on ``channel`` as a client would and report the answer; an admitted
    WebSocket or SSE stream is dropped at once (as a vanishing client does)."""
    params = {"token": token} if token else {}
    headers = dict(headers or {})
    if transport == "ws":
        headers = {"Upgrade": "websocket", "Connection": "Upgrade",
                   "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
                   "Sec-WebSocket-Version": "13", **headers}
    if transport == "poll":
        params["timeout"] = "0"
    method = "POST" if transport == "publish" else "GET"
    with requests.Session() as session, session.request(
        method, f"{server.url}/{transport}/{channel}", params=params, headers=headers,
        data=b"hello" if method == "POST" else None, stream=True, timeout=10,
    ) as response:
        body = response.json() if response.status_code >= 400 else {}
        return Outcome(response.status_code, body.get("error"), body.get("message"),
                       response.headers.get("Retry-After"))


def admitted(server, transport: str, channel: str, **kwargs) -> bool:
    return attempt(server, transport, channel, **kwargs).status == ADMITTED[transport]


def three_websockets_at_once(server, channel: str, headers: dict[str, str]) -> bool:
    """True when three WebSockets with ``headers`` are admitted together (then closed)."""
    clients = []
    try:
        for _ in range(3):
            clients.append(WSClient(f"{server.ws_url}/ws/{channel}", headers=headers))
        return True
    except Refused:
        return False
    finally:
        for client in clients:
            client.close()


def another_address() -> dict[str, str]:
    """Headers that make a request come from a client IP no other request uses (the servers
    of the limit tests trust one proxy hop)."""
    n = next(_addresses)
    return {"X-Forwarded-For": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=30)


def serve(env: dict[str, str]):
    proc = ServerProcess.serve(env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def secured():
    """Shares SECRET with the tests; every other option at its default."""
    yield from serve({"WSRELAY_SECRET_KEY": SECRET})


@pytest.fixture(scope="module")
def browsers_only():
    yield from serve({"WSRELAY_REQUIRE_ORIGIN": "1"})


@pytest.fixture(scope="module")
def limited():
    """Small limits, loopback not exempt, one trusted proxy hop so that each test can be a
    client IP of its own (``another_address``); shares SECRET for tokens with a subject."""
    yield from serve({
        "WSRELAY_SECRET_KEY": SECRET,
        "WSRELAY_LIMITS_EXEMPT": "", "WSRELAY_PROXY_HOPS": "1",
        "WSRELAY_MAX_CONNECTIONS_PER_IP": "3", "WSRELAY_PUBLISH_RATE": "1",
        "WSRELAY_PUBLISH_BURST": "5", "WSRELAY_SSE_KEEPALIVE": "0.5",
    })


@pytest.fixture(scope="module")
def impatient():
    yield from serve({"WSRELAY_HTTP_IDLE_TIMEOUT": "1", "WSRELAY_SSE_KEEPALIVE": "10"})


# -- origins ------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_foreign_origin_is_refused_on_every_transport(server, channel, transport):
    refused = attempt(server, transport, channel, headers=EVIL)
    assert (refused.status, refused.error) == (403, "origin_not_allowed")
    assert admitted(server, transport, channel, headers={"Origin": server.url})
    assert admitted(server, transport, channel)  # no Origin: not a browser, allowed by default


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_require_origin_refuses_requests_without_one(browsers_only, channel, transport):
    refused = attempt(browsers_only, transport, channel)
    assert (refused.status, refused.error) == (403, "origin_required")
    assert admitted(browsers_only, transport, channel, headers={"Origin": browsers_only.url})
    assert attempt(browsers_only, transport, channel, headers=EVIL).status == 403


def test_require_origin_lets_a_browsers_same_origin_get_through(browsers_only, channel):
    """EventSource and fetch send no Origin on a same-origin GET, but Sec-Fetch-Site."""
    for transport in ("sse", "poll"):
        assert admitted(browsers_only, transport, channel,
                        headers={"Sec-Fetch-Site": "same-origin"})
        assert attempt(browsers_only, transport, channel,
                       headers={"Sec-Fetch-Site": "cross-site"}).status == 403


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_origin_of_another_scheme_or_port_is_refused_on_every_transport(
    server, channel, transport
):
    """Origin is scheme, host and port: a TLS page is not this plain-HTTP server's own."""
    for origin in (server.url.replace("http:", "https:"), server.url.replace("http:", "ws:"),
                   f"http://127.0.0.1:{server.port + 1}", "http://127.0.0.1"):
        refused = attempt(server, transport, channel, headers={"Origin": origin})
        assert (refused.status, refused.error) == (403, "origin_not_allowed"), origin
    assert admitted(server, transport, channel, headers={"Origin": server.url})
    assert admitted(server, transport, channel,
                    headers={"Origin": f"http://localhost:{server.port}",
                             "Host": f"LOCALHOST:{server.port}"})


@pytest.fixture(scope="module")
def behind_tls_proxy():
    """As behind a reverse proxy that terminates TLS and says so in X-Forwarded-Proto."""
    yield from serve({"WSRELAY_PROXY_HOPS": "1",
                      "WSRELAY_ALLOWED_ORIGINS": "https://App.example:443"})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_behind_a_tls_proxy_the_own_origin_is_https(behind_tls_proxy, channel, transport):
    server = behind_tls_proxy
    https, http = f"https://127.0.0.1:{server.port}", f"http://127.0.0.1:{server.port}"
    tls = {"X-Forwarded-Proto": "https"}
    assert admitted(server, transport, channel, headers={**tls, "Origin": https})
    assert attempt(server, transport, channel, headers={**tls, "Origin": http}).status == 403
    assert attempt(server, transport, channel, headers={"Origin": https}).status == 403
    assert admitted(server, transport, channel, headers={"Origin": http})  # no proxy's word
    # An allowed origin, listed in another spelling, compares the same way.
    assert admitted(server, transport, channel, headers={"Origin": "https://app.example"})
    refused = attempt(server, transport, channel, headers={"Origin": "http://app.example"})
    assert (refused.status, refused.error) == (403, "origin_not_allowed")


# -- hosts (DNS rebinding) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def named():
    yield from serve({"WSRELAY_ALLOWED_HOSTS": "relay.example, .example.org"})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_loopback_relay_refuses_a_rebound_name_on_every_transport(server, channel, transport):
    """A page of evil.example whose name now resolves to 127.0.0.1 is same-origin with
    itself: only Host gives it away."""
    evil = f"evil.example:{server.port}"
    rebound = {"Host": evil, "Origin": f"http://{evil}"}
    refused = attempt(server, transport, channel, headers=rebound)
    assert (refused.status, refused.error) == (400, "invalid_host")
    assert "WSRELAY_ALLOWED_HOSTS" in refused.message
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "app.localhost",
                 f"[::1]:{server.port}"):
        assert admitted(server, transport, channel, headers={"Host": host}), host


def test_every_route_checks_the_host_first(server):
    for path in ("/", "/healthz", "/readyz", "/metrics", "/dashboard", "/ws", "/ws/bad$name",
                 "/poll/bad$name?since=nonsense", "/no-such-route"):
        response = requests.get(f"{server.url}{path}", headers={"Host": "evil.example"},
                                timeout=5)
        if path == "/no-such-route":  # not a wsrelay route: the application's own 404
            assert response.status_code == 404
            continue
        assert (response.status_code, response.json()["error"]) == (400, "invalid_host"), path
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_allowed_hosts_names_the_hosts_served(named, channel, transport):
    for host in ("relay.example", "relay.example:8443", "example.org", "ws.example.org"):
        assert admitted(named, transport, channel, headers={"Host": host}), host
    for host in ("evil.example", "relay.example.evil", "127.0.0.1", "localhost"):
        refused = attempt(named, transport, channel, headers={"Host": host})
        assert (refused.status, refused.error) == (400, "invalid_host"), host


def test_gunicorn_refuses_a_rebound_name_too(channel):
    server = ServerProcess.gunicorn()
    try:
        for transport in TRANSPORTS:
            refused = attempt(server, transport, channel, headers={"Host": "evil.example"})
            assert (refused.status, refused.error) == (400, "invalid_host"), transport
            assert admitted(server, transport, channel)
    finally:
        server.stop()


def test_off_loopback_any_name_is_served_in_development():
    """A relay reached on a public address (here as its handler reports one) answers to
    any name until WSRELAY_ALLOWED_HOSTS says otherwise."""
    app = wsrelay.create_app({})
    public = {"SERVER_ADDR": "203.0.113.7", "REMOTE_ADDR": "198.51.100.9"}
    try:
        client = app.test_client()
        assert client.get("/healthz", headers={"Host": "relay.example"},
                          environ_base=public).status_code == 200
        assert client.get("/healthz", headers={"Host": "relay.example"},
                          environ_base={**public, "SERVER_ADDR": "127.0.0.1"}).status_code == 400
    finally:
        app.extensions["wsrelay"].close()


# -- tokens -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_private_channel_needs_a_token_that_grants_it(secured, channel, transport):
    private = f"private-{channel}"

    def refused(**kwargs) -> tuple[int, str | None]:
        outcome = attempt(secured, transport, private, **kwargs)
        return outcome.status, outcome.error

    assert refused() == (401, "token_required")
    assert refused(token="not-a-token") == (401, "invalid_token")
    genuine = TOKENS.issue(private, publish=True)
    assert refused(token=genuine[:-2] + ("AA" if genuine[-2:] != "AA" else "BB")) == (
        401, "invalid_token")
    assert refused(token=Tokens("another key").issue(private, publish=True)) == (
        401, "invalid_token")
    expired = TOKENS.issue(private, publish=True, ttl=10, now=time.time() - 60)
    assert refused(token=expired) == (401, "token_expired")
    assert refused(token=TOKENS.issue("private-someone-else-*", publish=True)) == (
        403, "forbidden")
    reader = TOKENS.issue(private)
    if transport == "publish":
        assert refused(token=reader) == (403, "forbidden")  # subscribing is not publishing
    else:
        assert admitted(secured, transport, private, token=reader)
    assert admitted(secured, transport, private, token=TOKENS.issue("private-*", publish=True))
    assert admitted(secured, transport, private, headers={"Authorization": f"Bearer {genuine}"})


def test_token_holders_share_a_private_channel(secured, channel):
    private = f"private-{channel}"
    reader = TOKENS.issue(private)
    writer = {"Authorization": f"Bearer {TOKENS.issue(private, publish=True)}"}
    cursor = requests.get(f"{secured.url}/poll/{private}", params={"timeout": 0, "token": reader},
                          timeout=5).json()["cursor"]
    with secured.ws(f"/ws/{private}?token={reader}") as subscriber:
        response = requests.post(f"{secured.url}/publish/{private}", data="for members",
                                 headers=writer, timeout=5)
        assert response.status_code == 200
        assert subscriber.recv(timeout=5) == "for members"
    page = requests.get(f"{secured.url}/poll/{private}", headers={"Authorization":
                        f"Bearer {reader}"}, params={"since": cursor}, timeout=5).json()
    assert [m["data"] for m in page["messages"]] == ["for members"]


def test_a_websocket_without_the_publish_right_is_closed_when_it_sends(secured, channel):
    private = f"private-{channel}"
    writer_token = TOKENS.issue(private, publish=True)
    with secured.ws(f"/ws/{private}?token={TOKENS.issue(private)}") as reader, \
            secured.ws(f"/ws/{private}?echo=0&token={writer_token}") as writer:
        writer.send("from the writer")
        assert reader.recv(timeout=5) == "from the writer"  # subscribing works
        reader.send("from the reader")
        with pytest.raises(Closed) as closed:
            reader.recv(timeout=5)
        assert (closed.value.code, closed.value.reason) == (1008, "not allowed to publish")
        with pytest.raises(TimeoutError):
            writer.recv(timeout=0.5)  # it was never published


def test_require_token_closes_every_channel(make_server, channel):
    server = make_server(env={"WSRELAY_SECRET_KEY": SECRET, "WSRELAY_REQUIRE_TOKEN": "1"})
    for transport in TRANSPORTS:
        refused = attempt(server, transport, channel)
        assert (refused.status, refused.error) == (401, "token_required")
        assert admitted(server, transport, channel,
                        token=TOKENS.issue(channel, publish=True))
    refused = attempt(server, "publish", channel, token=TOKENS.issue(channel))
    assert (refused.status, refused.error) == (403, "forbidden")


def test_a_websocket_is_closed_with_1008_when_its_token_expires(secured, channel):
    private = f"private-{channel}"
    issued = time.time()
    token = TOKENS.issue(private, publish=True, ttl=1.5)
    with secured.ws(f"/ws/{private}?token={token}") as client:
        client.send("while valid")
        assert client.recv(timeout=5) == "while valid"
        with pytest.raises(Closed) as closed:
            client.recv(timeout=10)
        assert time.time() - issued >= 1.4
        assert (closed.value.code, closed.value.reason) == (1008, "token expired")
    refused = attempt(secured, "ws", private, token=token)
    assert (refused.status, refused.error) == (401, "token_expired")


def test_an_sse_stream_ends_when_its_token_expires(secured, channel):
    private = f"private-{channel}"
    token = TOKENS.issue(private, ttl=1.5)
    with requests.get(f"{secured.url}/sse/{private}", params={"token": token}, stream=True,
                      timeout=10) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_content(None))  # until the server ends the stream
    assert body.endswith(b"event: error\ndata: token expired\n\n")


def test_a_server_without_a_secret_opens_no_private_channel_to_any_token(server, channel):
    refused = attempt(server, "ws", f"private-{channel}", token=TOKENS.issue("private-*"))
    assert (refused.status, refused.error) == (401, "invalid_token")
    assert admitted(server, "ws", channel)  # public channels are as open as ever


def test_the_token_command_prints_a_token_the_server_accepts(secured, channel):
    env = {"WSRELAY_SECRET_KEY": SECRET}
    writer = manage("token", "--channel", f"private-{channel}-*", "--publish", "--ttl", "60",
                    env=env)
    assert writer.returncode == 0, writer.stderr
    token = writer.stdout.strip()
    room = f"private-{channel}-room"
    with secured.ws(f"/ws/{room}?echo=0&token={token}") as subscriber:
        response = requests.post(f"{secured.url}/publish/{room}", data="signed", timeout=5,
                                 headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        assert subscriber.recv(timeout=5) == "signed"
    reader = manage("token", "--channel", room, env=env).stdout.strip()
    assert admitted(secured, "sse", room, token=reader)
    assert attempt(secured, "publish", room, token=reader).status == 403
    assert not admitted(secured, "ws", f"private-{channel}-x.y", token=reader)


def test_the_token_command_names_a_subject():
    result = manage("token", "--channel", "room-*", "--publish", "--subject", "user-42",
                    env={"WSRELAY_SECRET_KEY": SECRET})
    assert result.returncode == 0, result.stderr
    claims = TOKENS.verify(result.stdout.strip())
    assert (claims.channel, claims.publish, claims.subject) == ("room-*", True, "user-42")


def test_manage_publish_reaches_a_private_channel_with_the_shared_secret(secured, channel):
    room = f"private-{channel}"
    with secured.ws(f"/ws/{room}?token={TOKENS.issue(room)}") as subscriber:
        result = manage("publish", room, "from the shell", "--url", secured.url,
                        env={"WSRELAY_SECRET_KEY": SECRET})
        assert result.returncode == 0, result.stderr
        assert subscriber.recv(timeout=5) == "from the shell"


@pytest.mark.parametrize("args,env,needle", [
    (["--channel", "private-*"], {}, "WSRELAY_SECRET_KEY is not set"),
    (["--channel", "bad channel"], {"WSRELAY_SECRET_KEY": SECRET}, "pattern"),
    (["--channel", "x", "--ttl", "0"], {"WSRELAY_SECRET_KEY": SECRET}, "--ttl"),
    (["--channel", "x", "--subject", "x" * 201], {"WSRELAY_SECRET_KEY": SECRET}, "--subject"),
])
def test_the_token_command_refuses_clearly(args, env, needle):
    result = manage("token", *args, env=env)
    assert result.returncode != 0
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("secret", ["", "too-short-for-production"])
def test_production_refuses_to_start_without_a_real_secret(secret):
    env = {"WSRELAY_ENV": "production", "WSRELAY_SECRET_KEY": secret}
    result = manage("serve", "--port", str(free_port()), env=env)
    assert result.returncode != 0
    assert "WSRELAY_SECRET_KEY" in result.stderr and "32" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="WSRELAY_SECRET_KEY"):
        wsrelay.create_app(env)


def test_production_refuses_to_start_without_allowed_hosts():
    env = {"WSRELAY_ENV": "production", "WSRELAY_SECRET_KEY": SECRET}
    result = manage("serve", "--port", str(free_port()), env=env)
    assert result.returncode != 0
    assert "WSRELAY_ALLOWED_HOSTS" in result.stderr and "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="WSRELAY_ALLOWED_HOSTS"):
        wsrelay.create_app(env)


def test_production_starts_with_a_real_secret_and_allowed_hosts(make_server, channel):
    server = make_server(env={"WSRELAY_ENV": "production", "WSRELAY_SECRET_KEY": SECRET,
                              "WSRELAY_ALLOWED_HOSTS": "127.0.0.1"})
    assert admitted(server, "ws", f"private-{channel}", token=TOKENS.issue("private-*"))
    refused = attempt(server, "ws", channel, headers={"Host": f"localhost:{server.port}"})
    assert (refused.status, refused.error) == (400, "invalid_host")


# -- the connect hook (an app of this process, as an application embeds wsrelay) ----------

@pytest.fixture
def hooked():
    app = wsrelay.create_app({"WSRELAY_SECRET_KEY": SECRET})
    relay = app.extensions["wsrelay"]
    calls = []

    @relay.connect_hook
    def check(request, channel, claims, action):
        calls.append((request.headers.get("X-User"), channel, claims, action))
        if request.headers.get("X-User") == "mallory":
            raise wsrelay.Refuse("mallory is banned")
        return not channel.endswith("-closed")

    server = WSGIServer(("127.0.0.1", 0), app, handler_class=RelayHandler, log=None)
    server.start()
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", calls=calls)
    server.stop()
    relay.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_connect_hook_sees_each_request_and_may_refuse_it(hooked, channel, transport):
    action = "publish" if transport == "publish" else "subscribe"
    assert admitted(hooked, transport, channel, headers={"X-User": "alice"})
    asked = [("alice", channel, None, action)]
    if transport == "ws":  # a raw WebSocket's right to publish is decided at the upgrade too
        asked.append(("alice", channel, None, "publish"))
    assert hooked.calls == asked
    banned = attempt(hooked, transport, channel, headers={"X-User": "mallory"})
    assert banned[:3] == (403, "refused", "mallory is banned")  # before any upgrade
    closed = attempt(hooked, transport, f"{channel}-closed", headers={"X-User": "alice"})
    assert closed[:2] == (403, "refused")
    token = TOKENS.issue("private-*", publish=True)
    assert admitted(hooked, transport, f"private-{channel}", token=token)
    claims = hooked.calls[-1][2]
    assert (claims.channel, claims.publish) == ("private-*", True)


def test_the_connect_hook_runs_after_the_origin_and_token_checks(hooked, channel):
    assert attempt(hooked, "ws", channel, headers=EVIL).status == 403
    assert attempt(hooked, "ws", f"private-{channel}").status == 401
    assert attempt(hooked, "ws", "bad$name").status == 400
    assert hooked.calls == []


# -- limits -------------------------------------------------------------------------------

def test_open_connections_of_one_ip_are_capped_before_the_upgrade(limited, channel):
    me = another_address()
    ws = WSClient(f"{limited.ws_url}/ws/{channel}", headers=me)
    sse = requests.get(f"{limited.url}/sse/{channel}", headers=me, stream=True, timeout=10)
    held = gevent.spawn(requests.get, f"{limited.url}/poll/{channel}", headers=me,
                        params={"timeout": 30}, timeout=40)
    try:
        wait_until(lambda: attempt(limited, "poll", channel, headers=me).status == 429)
        for transport in ("ws", "sse", "poll"):
            refused = attempt(limited, transport, channel, headers=me)
            assert (refused.status, refused.error) == (429, "too_many_connections")
            assert int(refused.retry_after) > 0
        assert admitted(limited, "ws", channel, headers=another_address())  # others are not
        assert admitted(limited, "publish", channel, headers=me)  # a publish holds nothing
        assert held.get(timeout=10).status_code == 200  # answered by that publish
        wait_until(lambda: admitted(limited, "poll", channel, headers=me))
    finally:
        ws.close()
        sse.close()
    # Closed, dropped and answered connections all gave their places back.
    wait_until(lambda: three_websockets_at_once(limited, channel, me))


def test_every_way_a_connection_ends_gives_its_place_back(limited, channel):
    me = another_address()
    bad_version = {**me, "Sec-WebSocket-Version": "8"}
    for _ in range(4):  # more rounds than the cap: a place kept once would show
        wait_until(lambda: admitted(limited, "ws", channel, headers=me))  # dropped, no close
        wait_until(lambda: attempt(limited, "ws", channel, headers=bad_version).status == 426)
        wait_until(lambda: admitted(limited, "sse", channel, headers=me))  # dropped stream
        wait_until(lambda: admitted(limited, "poll", channel, headers=me))
    wait_until(lambda: three_websockets_at_once(limited, channel, me))


def test_streams_of_a_worker_are_capped(make_server, channel):
    server = make_server(env={"WSRELAY_MAX_STREAMS": "2", "WSRELAY_SSE_KEEPALIVE": "0.5"})
    sse = requests.get(f"{server.url}/sse/{channel}", stream=True, timeout=10)
    held = gevent.spawn(requests.get, f"{server.url}/poll/{channel}", params={"timeout": 30},
                        timeout=40)
    try:
        wait_until(lambda: attempt(server, "poll", channel).status == 503)
        refused = attempt(server, "sse", channel)
        assert (refused.status, refused.error) == (503, "too_many_streams")
        assert int(refused.retry_after) > 0
        assert admitted(server, "ws", channel)  # a WebSocket is not a stream
        assert admitted(server, "publish", channel)
        assert held.get(timeout=10).status_code == 200
        wait_until(lambda: admitted(server, "poll", channel))
    finally:
        sse.close()
    wait_until(lambda: admitted(server, "sse", channel))


def test_a_websocket_publishing_too_fast_is_closed_with_1008(limited, channel):
    with WSClient(f"{limited.ws_url}/ws/{channel}", headers=another_address()) as listener, \
            WSClient(f"{limited.ws_url}/ws/{channel}?echo=0",
                     headers=another_address()) as fast:
        for n in range(6):  # the burst is 5, the rate 1 per second
            fast.send(f"m{n}")
        with pytest.raises(Closed) as closed:
            fast.recv(timeout=5)
        assert (closed.value.code, closed.value.reason) == (1008, "rate limit exceeded")
        assert [listener.recv(timeout=5) for _ in range(5)] == [f"m{n}" for n in range(5)]
        with pytest.raises(TimeoutError):
            listener.recv(timeout=0.5)


def test_http_publishing_too_fast_is_429_per_client_ip(limited, channel):
    me = another_address()
    outcomes = [attempt(limited, "publish", channel, headers=me) for _ in range(6)]
    assert [outcome.status for outcome in outcomes] == [200] * 5 + [429]
    assert outcomes[-1].error == "rate_limited"
    assert int(outcomes[-1].retry_after) >= 1
    assert admitted(limited, "publish", channel, headers=another_address())
    time.sleep(1.1)  # the rate is one per second
    assert admitted(limited, "publish", channel, headers=me)


def test_a_clients_new_connections_start_with_its_spent_publish_rate(limited, channel):
    """One bucket per client IP, whichever way it publishes: reconnecting gains nothing."""
    me = another_address()
    with WSClient(f"{limited.ws_url}/ws/{channel}", headers=another_address()) as listener:
        with WSClient(f"{limited.ws_url}/ws/{channel}?echo=0", headers=me) as first:
            for n in range(5):  # the burst
                first.send(f"m{n}")
            assert [listener.recv(timeout=5) for _ in range(5)] == [f"m{n}" for n in range(5)]
        with WSClient(f"{limited.ws_url}/ws/{channel}?echo=0", headers=me) as again:
            again.send("one more")
            with pytest.raises(Closed) as closed:
                again.recv(timeout=5)
            assert (closed.value.code, closed.value.reason) == (1008, "rate limit exceeded")
        with JsonClient(f"{limited.ws_url}/ws", headers=me) as json_client:
            answer = json_client.call(type="publish", channel=channel, data="and another")
            assert (answer["type"], answer["code"]) == ("error", "rate_limited")
        assert attempt(limited, "publish", channel, headers=me).error == "rate_limited"
        with pytest.raises(TimeoutError):
            listener.recv(timeout=0.5)  # none of them was published
        assert admitted(limited, "publish", channel, headers=another_address())


def test_a_token_subject_is_one_publisher_from_every_address(limited, channel):
    """A subject's clients share one rate wherever they connect from, and the IP's own rate
    still applies beside it."""
    token = TOKENS.issue(channel, publish=True, subject="mallory")
    with WSClient(f"{limited.ws_url}/ws/{channel}", headers=another_address()) as listener:
        with WSClient(f"{limited.ws_url}/ws/{channel}?echo=0&token={token}",
                      headers=another_address()) as first:
            for n in range(5):
                first.send(f"m{n}")
            assert [listener.recv(timeout=5) for _ in range(5)] == [f"m{n}" for n in range(5)]
        elsewhere = another_address()
        with WSClient(f"{limited.ws_url}/ws/{channel}?echo=0&token={token}",
                      headers=elsewhere) as second:
            second.send("from elsewhere")
            with pytest.raises(Closed) as closed:
                second.recv(timeout=5)
            assert closed.value.code == 1008
        assert attempt(limited, "publish", channel, token=token,
                       headers=another_address()).error == "rate_limited"
        other = TOKENS.issue(channel, publish=True, subject="alice")
        assert admitted(limited, "publish", channel, token=other, headers=elsewhere)
        assert admitted(limited, "publish", channel, headers=elsewhere)  # its IP has room


ATTACKER = "127.0.0.2"  # loopback, but not this host's address: not exempt by default


def _connect(server, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5,
                                    source_address=(source, 0))


def _reconnect_and_publish(server, channel: str, source: str, query: str,
                           seconds: float, burst: int) -> int:
    """Connect, send ``burst`` messages at once, read until closed, reconnect; for
    ``seconds``. Returns how many connections were upgraded."""
    frames = b"".join(client_frame(0x1, b"spam %d" % n) for n in range(burst))
    upgraded = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        gevent.sleep(0)  # loopback I/O need not block: let the bystander run
        with _connect(server, source) as sock:
            sock.sendall(handshake_request(f"/ws/{channel}?echo=0&{query}", server.port))
            status, _ = read_http_head(sock)
            if status != 101:
                assert status == 429, status
                gevent.sleep(0.05)
                continue
            upgraded += 1
            with contextlib.suppress(OSError):
                sock.sendall(frames)
                _read_until_close_frame(sock)  # over the rate: 1008
    return upgraded


def _read_until_close_frame(sock: socket.socket) -> None:
    sock.settimeout(2)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
        if any(opcode == 0x8 for opcode, _ in server_frames(data)):
            return


@pytest.mark.parametrize("who", ["an address", "a subject behind a proxy on this host"])
def test_a_reconnect_publish_loop_gets_no_more_than_the_rate(make_server, channel, who):
    """A client that reconnects after every burst gets its rate, not a new burst each time,
    while a bystander is served on time."""
    rate, burst, seconds = 50, 100, 3.0
    server = make_server(env={"WSRELAY_SECRET_KEY": SECRET, "WSRELAY_PUBLISH_RATE": str(rate),
                              "WSRELAY_PUBLISH_BURST": str(burst)})
    if who == "an address":
        source, query = ATTACKER, ""
    else:  # every client of a local proxy has its exempt address; the token tells them apart
        source, query = "127.0.0.1", "token=" + TOKENS.issue(channel, publish=True,
                                                             subject="mallory")
    with Bystander(server, f"{channel}-bystander") as bystander:
        started = time.monotonic()
        upgraded = _reconnect_and_publish(server, channel, source, query, seconds, 2 * burst)
        elapsed = time.monotonic() - started
    accepted = MessageId.parse(publish(server, channel, "count")).seq - 1
    print(f"\n{who}: {upgraded} connections in {elapsed:.1f} s, {accepted} messages accepted "
          f"(rate {rate}/s, burst {burst}); bystander p99 {bystander.p99():.3f} s")
    assert upgraded >= 5, "the loop did not reconnect"
    assert burst <= accepted <= rate * (elapsed + 1) + burst
    bystander.assert_served(p99=1.0)


def test_connects_of_one_address_are_rate_limited_before_the_upgrade(make_server, channel):
    rate, burst, seconds = 10, 20, 2.0
    server = make_server(env={"WSRELAY_CONNECT_RATE": str(rate),
                              "WSRELAY_CONNECT_BURST": str(burst)})
    with Bystander(server, f"{channel}-bystander") as bystander:
        requests_by_transport = {
            "ws": handshake_request(f"/ws/{channel}", server.port),
            "sse": f"GET /sse/{channel} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
            "poll": f"GET /poll/{channel}?timeout=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
        }
        statuses: Counter[int] = Counter()
        refusals = []
        started = time.monotonic()
        for transport in itertools.cycle(requests_by_transport):
            if time.monotonic() - started > seconds:
                break
            gevent.sleep(0)
            with _connect(server, ATTACKER) as sock:
                sock.sendall(requests_by_transport[transport])
                status, rest = read_http_head(sock)
                statuses[status] += 1
                if status == 429:
                    while b"}" not in rest:
                        rest += sock.recv(4096)
                    refusals.append(rest)
        elapsed = time.monotonic() - started
        admitted_count = statuses[101] + statuses[200]
        print(f"\n{sum(statuses.values())} connects in {elapsed:.1f} s: {dict(statuses)}")
        assert set(statuses) <= {101, 200, 429}
        assert burst <= admitted_count <= rate * (elapsed + 1) + burst
        assert statuses[429] > admitted_count  # the loop went on well past the rate
        assert all(b'"error":"connect_rate_limited"' in rest for rest in refusals)
        with _connect(server, "127.0.0.3") as sock:  # another address is not held back
            sock.sendall(handshake_request(f"/ws/{channel}", server.port))
            assert read_http_head(sock)[0] == 101
    bystander.assert_served(p99=1.0)
    time.sleep(1.1)  # Retry-After: one more is allowed a second later
    with _connect(server, ATTACKER) as sock:
        sock.sendall(handshake_request(f"/ws/{channel}", server.port))
        assert read_http_head(sock)[0] == 101


def test_a_reconnect_storm_behind_one_address_gets_in_with_the_defaults(make_server, channel):
    """After a deploy, every client behind a NAT comes back at once: as many as the per-IP
    cap holds are admitted together by the default connect rate."""
    server = make_server()
    clients = 250

    def reconnect(_: int) -> int:
        sock = _connect(server, ATTACKER)
        sock.sendall(handshake_request(f"/ws/{channel}", server.port))
        return read_http_head(sock)[0], sock

    answers = [task.get(timeout=30) for task in
               [gevent.spawn(reconnect, n) for n in range(clients)]]
    try:
        assert Counter(status for status, _ in answers) == {101: clients}
    finally:
        for _, sock in answers:
            sock.close()


# -- the HTTP idle timeout ------------------------------------------------------------------

def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_slowloris_head_is_cut_while_other_clients_are_served(impatient):
    sock = socket.create_connection(("127.0.0.1", impatient.port), timeout=10)

    def dribble() -> None:
        try:
            for n in range(40):
                sock.sendall(f"X-Slow-{n}: 1\r\n".encode())
                gevent.sleep(0.2)
        except OSError:
            pass  # cut

    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    dribbler = gevent.spawn(dribble)
    try:
        for _ in range(3):
            assert requests.get(f"{impatient.url}/healthz", timeout=5).status_code == 200
        answer = _read_until_closed(sock)
        elapsed = time.monotonic() - started
    finally:
        dribbler.kill()
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"error":"request_timeout"' in answer
    assert 0.9 <= elapsed < 4


def test_idle_and_silent_connections_are_closed_after_the_timeout(impatient):
    keep_alive = http.client.HTTPConnection("127.0.0.1", impatient.port, timeout=10)
    keep_alive.request("GET", "/healthz")
    assert keep_alive.getresponse().read()
    silent = socket.create_connection(("127.0.0.1", impatient.port), timeout=10)
    started = time.monotonic()
    try:
        assert keep_alive.sock.recv(1) == b""  # closed by the server, quietly
        assert silent.recv(1) == b""
        assert 0.9 <= time.monotonic() - started < 4
    finally:
        keep_alive.close()
        silent.close()


def test_the_timeout_spares_websockets_and_streaming_responses(impatient, channel):
    held = gevent.spawn(requests.get, f"{impatient.url}/poll/{channel}", params={"timeout": 20},
                        timeout=30)
    with impatient.ws(f"/ws/{channel}") as ws, requests.get(
        f"{impatient.url}/sse/{channel}", stream=True, timeout=10
    ) as sse:
        gevent.sleep(2.5)  # well past the one-second idle timeout
        requests.post(f"{impatient.url}/publish/{channel}", data="late", timeout=5)
        assert ws.recv(timeout=5) == "late"
        assert [m["data"] for m in held.get(timeout=5).json()["messages"]] == ["late"]
        assert b"data: late" in itertools.islice(sse.iter_lines(), 20)
