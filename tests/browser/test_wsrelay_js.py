"""``/static/wsrelay.js``, the browser client, in real headless Chromium against real servers.

Each page is a document of the server's own origin that loads the script with a
``<script src="/static/wsrelay.js">`` tag, as an application's page would, and
records what its client sees (``window.r``). Every API item is checked on every
transport it applies to; then the client's promises under trouble: fallback
when WebSocket is missing or blocked, long-polling with nothing lost, and
server restarts (memory broker: history is gone, the gap is reported; Redis:
history survives, nothing published during the outage is lost).
"""

from __future__ import annotations

import json
import re
import uuid

import gevent
import pytest
import requests
from playwright.sync_api import Page

from tests.browser import NO_EVENTSOURCE, NO_WEBSOCKET, TIMEOUT, new_page, publish
from tests.support import RedisServer, wait_until
from wsrelay.auth import Tokens

pytestmark = pytest.mark.timeout(30)

TRANSPORTS = ["websocket", "sse", "poll"]
ID_PATTERN = re.compile(r"\d{13}-\d{10}")
SECRET = "wsrelay-js-test-secret-key-of-enough-length"

#: What a page records of its client: messages per channel as [data, meta.id, meta.channel]
#: (binary data as a list of byte values), states, transport changes, errors, resets.
RECORDER = """
window.record = (options) => {
  const client = wsrelay.connect(options);
  const r = {client, got: {}, metas: {}, live: {}, states: [client.state], transports: [],
             errors: [], resets: []};
  client.on('state', (state) => r.states.push(state));
  client.on('transport', (transport) => r.transports.push(transport));
  client.on('error', (e) => r.errors.push({message: e.message, code: e.code, channel: e.channel}));
  r.subscribe = (channel) => {
    const live = client.subscribe(channel, (data, meta) => {
      (r.got[channel] = r.got[channel] || []).push(
        [typeof data === 'string' ? data : Array.from(data), meta.id, meta.channel]);
      (r.metas[channel] = r.metas[channel] || []).push(meta);
    }, {onReset: (channel, cursor) => r.resets.push([channel, cursor])});
    live.then((cursor) => { r.live[channel] = cursor; }, (e) => { r.live[channel] = e.code; });
    return live;
  };
  return r;
};
"""


@pytest.fixture
def open_client(browser):
    """``open_client(server, *init_scripts, ws_route=None, **options)``: a page whose
    ``window.r`` records a ``wsrelay.connect(options)`` client. ``ws_route`` stands between
    the page and the server's ``/ws`` (Playwright's WebSocket route: a proxy in the test's
    hands); ``prepare(page)`` runs before the page loads. The page's WebSocket URLs are in
    ``page.sockets``."""
    opened: list[tuple[Page, list[str]]] = []

    def make(server, *init_scripts: str, ws_route=None, prepare=None, **options) -> Page:
        page, errors = new_page(browser, *init_scripts)
        opened.append((page, errors))
        page.sockets = []
        page.on("websocket", lambda ws: page.sockets.append(ws.url))
        if ws_route is not None:
            page.route_web_socket("**/ws", ws_route)
        if prepare is not None:
            prepare(page)
        page.goto(f"{server.url}/healthz")  # any document of the server's origin
        page.add_script_tag(url="/static/wsrelay.js")
        page.add_script_tag(content=RECORDER)
        page.evaluate("(options) => { window.r = record(options); }", options)
        return page

    yield make
    for page, _ in opened:
        page.context.close()
    errors = [error for _, page_errors in opened for error in page_errors]
    assert not errors, errors


def state(page: Page) -> str:
    return page.evaluate("r.client.state")


def wait_open(page: Page, transport: str) -> None:
    page.wait_for_function("() => r.client.state === 'open'")
    assert page.evaluate("r.client.transport") == transport


def subscribe(page: Page, *channels: str, live: bool = True) -> None:
    """``client.subscribe`` each channel; with ``live``, wait until its promise says the
    subscription is live (what is published from then on reaches the handler)."""
    for channel in channels:
        if live:
            cursor = page.evaluate("(channel) => r.subscribe(channel)", channel)
            assert isinstance(cursor, str) and cursor, cursor
        else:
            page.evaluate("(channel) => { r.subscribe(channel); }", channel)


def received(page: Page, channel: str) -> list:
    """[data, id, channel] of every message the channel's handler got, in order."""
    return page.evaluate("(channel) => r.got[channel] || []", channel)


def texts(page: Page, channel: str) -> list:
    return [data for data, _, _ in received(page, channel)]


def wait_for(page: Page, channel: str, *expected, timeout: float = TIMEOUT) -> list:
    """Wait until every ``expected`` data is among the channel's messages; return them."""
    page.wait_for_function(
        "([channel, expected]) => {"
        " const got = (r.got[channel] || []).map(m => JSON.stringify(m[0]));"
        " return expected.every(e => got.includes(JSON.stringify(e))); }",
        arg=[channel, list(expected)], timeout=timeout,
    )
    return texts(page, channel)


def send(page: Page, channel: str, data: str) -> str:
    """``client.publish`` from the page; returns the id the promise resolved to."""
    return page.evaluate("([channel, data]) => r.client.publish(channel, data)", [channel, data])


def fence(server_url: str, channel: str, *pages: Page) -> list[list]:
    """Publish a unique last message and wait for it on every page: messages of a channel
    arrive in order, so anything before it (a late duplicate too) has arrived. Returns each
    page's texts without the fence."""
    mark = f"fence {uuid.uuid4().hex[:8]}"
    publish(server_url, channel, mark)
    logs = []
    for page in pages:
        log = wait_for(page, channel, mark)
        assert log.count(mark) == 1, log
        logs.append([text for text in log if text != mark])
    return logs


def no_duplicate_ids(page: Page, channel: str) -> None:
    ids = [message_id for _, message_id, _ in received(page, channel)]
    assert len(ids) == len(set(ids)), ids


# -- connect, transport, state ---------------------------------------------------------


def test_connect_defaults_to_websocket_on_the_pages_origin(server, open_client):
    page = open_client(server)
    wait_open(page, "websocket")
    assert page.sockets == [f"{server.ws_url}/ws"]
    assert page.evaluate("r.states") == ["connecting", "open"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_transports_option_picks_the_transport(server, channel, open_client, transport):
    page = open_client(server, transports=[transport])
    subscribe(page, channel)
    wait_open(page, transport)
    assert bool(page.sockets) == (transport == "websocket")


def test_the_url_option_names_the_server(server, make_server, channel, open_client):
    """A page of one server using another (allowed origin) over WebSocket."""
    other = make_server(env={"WSRELAY_ALLOWED_ORIGINS": server.url})
    page = open_client(server, url=other.url)
    subscribe(page, channel)
    wait_open(page, "websocket")
    assert page.sockets == [f"{other.ws_url}/ws"]
    publish(other.url, channel, "from the other server")
    wait_for(page, channel, "from the other server")


def test_close_ends_the_connection_and_rejects_what_waits(server, channel, open_client):
    page = open_client(server)
    subscribe(page, channel)
    wait_open(page, "websocket")
    assert page.evaluate("r.client.close(), r.client.state") == "closed"
    assert page.evaluate("r.states") == ["connecting", "open", "closed"]
    error = page.evaluate(
        "(channel) => r.client.publish(channel, 'late').then(() => 'resolved', e => e.message)",
        channel,
    )
    assert error == "client closed"
    publish(server.url, channel, "not for a closed client")
    with page.expect_request("**/healthz"):  # a round trip: nothing arrives meanwhile
        page.evaluate("fetch('/healthz')")
    assert received(page, channel) == []


def test_no_usable_transport_is_an_error_not_a_silent_hang(server, open_client):
    page = open_client(server, NO_WEBSOCKET, transports=["websocket"])
    page.wait_for_function("() => r.errors.length > 0")
    assert page.evaluate("[r.client.state, r.client.transport]") == ["closed", None]
    assert page.evaluate("r.errors[0].code") == "no_transport"


# -- subscribe, handler, publish -------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_handlers_get_text_and_binary_with_their_ids(server, channel, open_client, transport):
    page = open_client(server, transports=[transport])
    subscribe(page, channel)
    wait_open(page, transport)

    ids = [
        publish(server.url, channel, "plain text"),
        publish(server.url, channel, bytes([0, 1, 254, 255])),
        publish(server.url, channel, "line one\r\nline two\nünïcödé ✓"),
        send(page, channel, "from the page"),
        page.evaluate("(c) => r.client.publish(c, new Uint8Array([7, 8, 9]))", channel),
    ]
    wait_for(page, channel, [7, 8, 9])
    got = received(page, channel)
    assert got == [
        ["plain text", ids[0], channel],
        [[0, 1, 254, 255], ids[1], channel],
        ["line one\r\nline two\nünïcödé ✓", ids[2], channel],
        ["from the page", ids[3], channel],
        [[7, 8, 9], ids[4], channel],
    ]
    # What the page published is what every other client got, binary as binary.
    history = requests.get(f"{server.url}/poll/{channel}?since={ids[2]}&timeout=0", timeout=5)
    assert [m.get("encoding") for m in history.json()["messages"]] == [None, "base64"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_many_channels_each_to_its_own_handler(server, open_client, transport):
    page = open_client(server, transports=[transport])
    rooms = [f"room-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    subscribe(page, *rooms)
    wait_open(page, transport)
    for n in range(3):
        for room in rooms:
            send(page, room, f"{room} #{n}")
    for room in rooms:
        assert fence(server.url, room, page) == [[f"{room} #{n}" for n in range(3)]]
    if transport == "websocket":
        assert page.sockets == [f"{server.ws_url}/ws"]  # one socket carries every channel


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unsubscribe_stops_delivery(server, channel, open_client, transport):
    page = open_client(server, transports=[transport])
    subscribe(page, channel)
    wait_open(page, transport)
    send(page, channel, "before")
    wait_for(page, channel, "before")

    page.evaluate("(channel) => r.client.unsubscribe(channel)", channel)
    assert page.evaluate("r.client.channels") == []
    send(page, channel, "while away")  # published after the unsubscribe, by this very client
    subscribe(page, channel)           # a new subscription starts from now
    send(page, channel, "back")
    assert fence(server.url, channel, page) == [["before", "back"]]


def test_publish_resolves_to_the_id_every_transport_shows(server, channel, open_client):
    pages = [open_client(server, transports=[transport]) for transport in TRANSPORTS]
    for page, transport in zip(pages, TRANSPORTS, strict=True):
        subscribe(page, channel)
        wait_open(page, transport)
    ids = [send(page, channel, f"from {transport}") for page, transport in
           zip(pages, TRANSPORTS, strict=True)]
    assert len(set(ids)) == 3
    fence(server.url, channel, *pages)
    for page in pages:
        got = {data: message_id for data, message_id, _ in received(page, channel)}
        assert [got[f"from {transport}"] for transport in TRANSPORTS] == ids


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refused_publish_rejects_with_the_servers_reason(server, open_client, transport):
    page = open_client(server, transports=[transport])
    wait_open(page, transport)
    error = page.evaluate(
        "() => r.client.publish('private-nobody', 'x').then(() => null,"
        " e => ({message: e.message, code: e.code}))"
    )
    assert error["code"] == "token_required"
    assert "need a token" in error["message"]
    with pytest.raises(Exception, match="invalid channel name"):
        page.evaluate("() => r.client.publish('no spaces', 'x')")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_token_opens_private_channels_on_every_transport(make_server, open_client, transport):
    server = make_server(env={"WSRELAY_SECRET_KEY": SECRET})
    channel = f"private-team-{uuid.uuid4().hex[:8]}"
    token = Tokens(SECRET).issue("private-team-*", publish=True, ttl=600)
    page = open_client(server, transports=[transport], token=token)
    stranger = open_client(server, transports=[transport])
    subscribe(page, channel)
    subscribe(stranger, channel, live=False)
    wait_open(page, transport)

    message_id = send(page, channel, "for the team")
    assert wait_for(page, channel, "for the team") == ["for the team"]
    assert received(page, channel)[0][1] == message_id
    # Without the token the same subscription is refused, and said so.
    stranger.wait_for_function("() => r.errors.length > 0")
    assert stranger.evaluate("r.errors[0]")["channel"] == channel
    assert stranger.evaluate("r.errors[0]")["code"] == "token_required"
    assert received(stranger, channel) == []


def test_the_token_may_be_a_function(make_server, open_client):
    server = make_server(env={"WSRELAY_SECRET_KEY": SECRET})
    channel = f"private-team-{uuid.uuid4().hex[:8]}"
    page = open_client(server, transports=["poll"])
    page.evaluate(
        "(token) => { window.asked = 0; r.client.close();"
        " window.r = record({token: () => (window.asked++, token)}); }",
        Tokens(SECRET).issue("private-team-*", publish=True, ttl=600),
    )
    subscribe(page, channel)
    wait_open(page, "websocket")
    send(page, channel, "with a fresh token")
    wait_for(page, channel, "with a fresh token")
    assert page.evaluate("window.asked") == 1  # asked for the socket's URL


def test_a_refused_subscription_rejects_and_is_reported_on_the_error_event(server, open_client):
    page = open_client(server)
    wait_open(page, "websocket")
    refusal = page.evaluate(
        "() => r.subscribe('private-nobody').then(() => null, e => [e.code, e.channel])"
    )
    assert refusal == ["token_required", "private-nobody"]
    assert page.evaluate("r.errors") == [{
        "message": page.evaluate("r.errors[0].message"), "code": "token_required",
        "channel": "private-nobody",
    }]
    assert state(page) == "open"  # one refused channel does not cost the connection


@pytest.fixture
def host_app(tmp_path):
    """tests/system/test_logout.py's host app (its users named by a cookie), one worker."""
    from tests.system.test_logout import start

    server = start(tmp_path, "-w", "1", env={"HOST_BROKER_URL": "memory://"})
    yield server
    server.stop()


def test_a_subscription_the_server_ends_is_dropped_and_reported(host_app, open_client):
    page = open_client(host_app, "document.cookie = 'user=ada; path=/';")
    wait_open(page, "websocket")
    subscribe(page, "user-ada", "lobby")
    ended = requests.post(f"{host_app.url}/leave/ada/user-ada", timeout=5)
    assert ended.json() == {"ended": 1}
    page.wait_for_function("() => r.errors.length > 0")
    assert page.evaluate("r.errors") == [
        {"message": "left the room", "code": "unsubscribed", "channel": "user-ada"}]
    assert page.evaluate("r.client.channels") == ["lobby"]
    publish(host_app, "user-ada", "private")
    publish(host_app, "lobby", "public")
    wait_for(page, "lobby", "public")
    assert texts(page, "user-ada") == []
    assert state(page) == "open"  # one ended channel does not cost the connection


# -- presence --------------------------------------------------------------------------


def test_presence_counts_the_channels_subscribers(server, channel, open_client):
    first = open_client(server)
    second = open_client(server)
    sse = open_client(server, transports=["sse"])
    for page in (first, second):
        subscribe(page, channel)
        wait_open(page, "websocket")
    subscribe(sse, channel)
    wait_open(sse, "sse")

    def count() -> int:
        return first.evaluate("(channel) => r.client.presence(channel)", channel)

    # WebSocket subscribers are counted (an SSE stream or a long-poll is a cursor over
    # history, not a subscriber).
    first.wait_for_function(
        "(channel) => r.client.presence(channel).then(n => n === 2)", arg=channel
    )
    second.evaluate("(channel) => r.client.unsubscribe(channel)", channel)
    first.wait_for_function(
        "(channel) => r.client.presence(channel).then(n => n === 1)", arg=channel
    )
    assert count() == 1
    # SSE and long-poll cannot ask: null, not a guess.
    assert sse.evaluate("(channel) => r.client.presence(channel)", channel) is None


def test_presence_counts_subscribers_on_every_server_sharing_redis(
    make_server, redis_server, channel, open_client
):
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    pages = [open_client(make_server(env=env)) for _ in range(2)]
    for page in pages:
        subscribe(page, channel)
        wait_open(page, "websocket")
    # Each server reports its counts to Redis about once a second.
    pages[0].wait_for_function(
        "(channel) => r.client.presence(channel).then(n => n === 2)", arg=channel, polling=200
    )


# -- duplicates, resets ----------------------------------------------------------------


def test_a_message_delivered_twice_reaches_the_handler_once(server, channel, open_client):
    """A proxy that sends every frame of the server twice: the handler sees each id once."""

    def doubling(ws):
        upstream = ws.connect_to_server()
        upstream.on_message(lambda message: (ws.send(message), ws.send(message)))

    page = open_client(server, ws_route=doubling)
    subscribe(page, channel)
    wait_open(page, "websocket")
    for n in range(5):
        send(page, channel, f"m{n}")
    assert fence(server.url, channel, page) == [[f"m{n}" for n in range(5)]]


def test_a_since_option_resumes_from_a_known_id(server, channel, open_client):
    ids = [publish(server.url, channel, f"m{n}") for n in range(4)]
    page = open_client(server)
    page.evaluate(
        "([channel, since]) => r.client.subscribe(channel, (d, m) =>"
        " (r.got[channel] = r.got[channel] || []).push([d, m.id, m.channel]), {since})",
        [channel, ids[1]],
    )
    assert fence(server.url, channel, page) == [["m2", "m3"]]


# -- scenarios -------------------------------------------------------------------------


def test_two_pages_chat(server, channel, open_client):
    alice = open_client(server)
    bob = open_client(server)
    for page in (alice, bob):
        subscribe(page, channel)
        wait_open(page, "websocket")
    lines = []
    for n in range(5):
        speaker = alice if n % 2 == 0 else bob
        line = f"{'alice' if speaker is alice else 'bob'}: line {n}"
        send(speaker, channel, line)
        lines.append(line)
    assert fence(server.url, channel, alice, bob) == [lines, lines]


@pytest.mark.parametrize("missing", ["websocket", "websocket and eventsource"])
def test_a_page_without_websocket_falls_back_and_chats_both_ways(
    server, channel, open_client, missing
):
    scripts = [NO_WEBSOCKET] + ([NO_EVENTSOURCE] if "eventsource" in missing else [])
    legacy = open_client(server, *scripts)
    modern = open_client(server)
    transport = "poll" if "eventsource" in missing else "sse"
    for page in (legacy, modern):
        subscribe(page, channel)
    wait_open(legacy, transport)
    wait_open(modern, "websocket")
    assert legacy.sockets == []

    send(legacy, channel, "from the old browser")
    wait_for(modern, channel, "from the old browser")
    send(modern, channel, "from the new browser")
    wait_for(legacy, channel, "from the new browser")
    assert fence(server.url, channel, legacy, modern) == [
        ["from the old browser", "from the new browser"]
    ] * 2


def test_a_blocked_websocket_falls_back_to_sse(server, channel, open_client):
    """A proxy that kills every WebSocket: the client gives up on WebSocket after two failed
    attempts and uses SSE, with the same API."""
    attempts = []

    def block(ws):
        attempts.append(ws.url)
        ws.close(code=1008, reason="blocked by proxy")

    page = open_client(server, ws_route=block)
    subscribe(page, channel)
    wait_open(page, "sse")
    assert page.evaluate("r.transports") == ["sse"]
    assert len(attempts) == 2
    send(page, channel, "still here")
    assert fence(server.url, channel, page) == [["still here"]]


def test_a_page_loaded_while_the_server_is_down_waits_for_it_on_websocket(
    server, make_server, channel, open_client
):
    """Failing to connect is no reason to fall back when the server does not answer HTTP
    either: that is an outage, not a blocked WebSocket."""
    down = make_server(env={"WSRELAY_ALLOWED_ORIGINS": server.url})
    down.stop()
    page = open_client(server, url=down.url, maxDelay=500)
    subscribe(page, channel, live=False)
    page.wait_for_function("() => r.client.state === 'connecting'")
    while len(page.sockets) < 4:  # the fallback rule has been asked twice
        page.wait_for_event("websocket")
    assert page.evaluate("[r.client.transport, r.transports]") == ["websocket", []]

    back = make_server(env={"WSRELAY_ALLOWED_ORIGINS": server.url}, port=down.port)
    wait_open(page, "websocket")
    publish(back.url, channel, "there you are")
    wait_for(page, channel, "there you are")


def test_a_long_polling_page_gets_a_burst_complete_and_in_order(server, channel, open_client):
    page = open_client(server, NO_WEBSOCKET, NO_EVENTSOURCE)
    subscribe(page, channel)
    wait_open(page, "poll")
    burst = [f"burst {n:03d}" for n in range(60)]
    with server.ws(f"/ws/{channel}") as service:
        for text in burst[:30]:
            service.send(text)
        for text in burst[30:]:
            publish(server.url, channel, text)
    send(page, channel, "and the page's own")
    (log,) = fence(server.url, channel, page)
    assert log == [*burst, "and the page's own"]
    no_duplicate_ids(page, channel)


def alice_and_bob(
    open_client, channel: str, transport: str, alice_server, bob_server
) -> tuple[Page, Page]:
    """Alice's page on ``transport``, Bob's on WebSocket, both subscribed to ``channel`` and
    open; both retry every second at most, so a restarted server is back in the test's time."""
    alice = open_client(alice_server, transports=[transport], maxDelay=1000)
    bob = open_client(bob_server, maxDelay=1000)
    for page in (alice, bob):
        subscribe(page, channel)
    wait_open(alice, transport)
    wait_open(bob, "websocket")
    return alice, bob


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_restart_mid_chat_memory_broker(make_server, channel, open_client, transport):
    """The memory broker forgets everything: pages reconnect, are told of the gap (their
    cursors are from the old server), and chat on; nothing arrives twice."""
    first = make_server()
    alice, bob = alice_and_bob(open_client, channel, transport, first, first)
    send(alice, channel, "before the restart")
    wait_for(bob, channel, "before the restart")
    wait_for(alice, channel, "before the restart")

    first.stop()
    for page in (alice, bob):
        page.wait_for_function("() => r.client.state === 'connecting'")
    # Typed while the server is down: sent once it is back.
    queued = bob.evaluate(
        "(channel) => { window.queued = r.client.publish(channel, 'typed during the outage');"
        " return r.client.state; }", channel
    )
    assert queued == "connecting"

    second = make_server(port=first.port)
    wait_open(alice, transport)
    wait_open(bob, "websocket")
    assert bob.evaluate("window.queued") is not None
    send(alice, channel, "after the restart")
    logs = fence(second.url, channel, alice, bob)
    for page, log in zip((alice, bob), logs, strict=True):
        assert log == ["before the restart", "typed during the outage", "after the restart"]
        no_duplicate_ids(page, channel)
        assert [reset[0] for reset in page.evaluate("r.resets")] == [channel]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_restart_on_redis_loses_nothing(
    make_server, redis_server, channel, open_client, transport
):
    """Two servers on one Redis. Alice's server restarts; Bob, on the other, chats on and a
    service publishes meanwhile. Alice resumes from her last id: everything, once, in order."""
    env = {"WSRELAY_BROKER_URL": redis_server.url}
    first, other = make_server(env=env), make_server(env=env)
    alice, bob = alice_and_bob(open_client, channel, transport, first, other)
    send(alice, channel, "alice: hi")
    send(bob, channel, "bob: hello")
    wait_for(alice, channel, "alice: hi", "bob: hello")

    first.stop()
    alice.wait_for_function("() => r.client.state === 'connecting'")
    missed = ["bob: are you there?", "bob: you missed this"]
    for text in missed:
        send(bob, channel, text)
    missed.append("service: while alice was away")
    publish(other.url, channel, missed[-1])

    make_server(env=env, port=first.port)
    wait_open(alice, transport)
    send(alice, channel, "alice: back")
    expected = ["alice: hi", "bob: hello", *missed, "alice: back"]
    assert fence(other.url, channel, alice, bob) == [expected, expected]
    no_duplicate_ids(alice, channel)
    assert alice.evaluate("r.resets") == []  # history filled the gap


# -- retrying what may pass, dropping what cannot ---------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_channel_refused_while_redis_is_down_goes_live_once_it_is_back(
    make_server, open_client, channel, transport
):
    """Redis stopped while the page loads: the socket opens, the subscription is refused
    with broker_unavailable (reported once), retried with the backoff, and live as soon as
    Redis answers again; what is published then arrives. (It used to stay refused while
    the client said 'open'.)"""
    redis = RedisServer.start()
    try:
        server = make_server(env={"WSRELAY_BROKER_URL": redis.url})
        redis.stop()
        page = open_client(server, transports=[transport], maxDelay=1000)
        subscribe(page, channel, live=False)
        page.wait_for_function("(c) => r.errors.some(e => e.code === 'broker_unavailable')",
                               arg=channel)
        assert page.evaluate("(c) => r.live[c]", channel) is None  # neither live nor dropped
        assert channel in page.evaluate("r.client.channels")

        redis.restart()
        page.wait_for_function("(c) => typeof r.live[c] === 'string'", arg=channel,
                               timeout=20_000)
        publish(server.url, channel, "redis is back")
        assert wait_for(page, channel, "redis is back") == ["redis is back"]
        assert [e["code"] for e in page.evaluate("r.errors")] == ["broker_unavailable"]
    finally:
        redis.stop()


def test_a_channel_refused_for_good_is_dropped_and_not_asked_again(server, open_client):
    """A refusal no retry can help (no token for a private channel) rejects, is reported,
    and the channel leaves client.channels: a reconnect does not ask for it again."""
    sent: list[str] = []

    def watching(ws):
        upstream = ws.connect_to_server()
        ws.on_message(lambda message: (sent.append(message), upstream.send(message)))
        ws.watching = upstream

    sockets = []
    page = open_client(server, ws_route=lambda ws: (sockets.append(ws), watching(ws)), maxDelay=500)
    wait_open(page, "websocket")
    assert page.evaluate("r.subscribe('private-nobody').then(() => 'live', e => e.code)") == (
        "token_required")
    assert page.evaluate("r.client.channels") == []
    subscribe(page, "public-ok")
    sockets[0].close()  # the connection drops: the client reconnects
    page.wait_for_function("() => r.states.filter(s => s === 'open').length === 2")
    page.wait_for_function("() => r.live['public-ok'] !== undefined")
    asked = [json.loads(m)["channel"] for m in sent if json.loads(m).get("type") == "subscribe"]
    assert asked.count("private-nobody") == 1
    assert asked.count("public-ok") == 2


# -- limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_message_over_the_limit_is_refused_with_a_code_and_the_connection_stays(
    make_server, open_client, channel, transport
):
    """Over WSRELAY_MAX_MESSAGE_SIZE: rejected with request_entity_too_large before anything
    is sent; the connection stays open. At the limit, text and binary are accepted on every
    transport (binary is not held to 3/4 of the limit by its base64), and so is text whose
    JSON escapes would make a wsrelay.v1 frame too large (it goes by POST)."""
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000"})
    page = open_client(server, transports=[transport])
    subscribe(page, channel)
    wait_open(page, transport)
    states = page.evaluate("r.states")

    refused = page.evaluate(
        "(c) => r.client.publish(c, 'x'.repeat(1001)).then(() => null, e => [e.code, e.retryable])",
        channel)
    assert refused == ["request_entity_too_large", False]
    refused = page.evaluate(
        "(c) => r.client.publish(c, new Uint8Array(1001)).then(() => null, e => e.code)", channel)
    assert refused == "request_entity_too_large"
    assert page.evaluate("r.states") == states and state(page) == "open"

    escaped = "\x01" * 1000  # 6 bytes each as JSON: a frame of 6 KB for 1000 bytes of data
    for data in ("é" * 500, escaped):
        send(page, channel, data)
    page.evaluate("(c) => r.client.publish(c, new Uint8Array(1000).fill(7))", channel)
    assert fence(server.url, channel, page) == [["é" * 500, escaped, [7] * 1000]]
    assert page.evaluate("r.states") == states
    if transport == "websocket":
        assert len(page.sockets) == 1


def test_without_the_clients_check_the_server_refuses_and_keeps_the_socket(
    make_server, open_client, channel
):
    """A client that could not read /client.json sends the message: the server answers
    with the same code over wsrelay.v1, and the socket stays (it used to close with 1009
    and every channel reconnected, the promise saying connection_lost)."""
    server = make_server(env={"WSRELAY_MAX_MESSAGE_SIZE": "1000"})
    page = open_client(server, prepare=lambda page: page.route(
        "**/client.json", lambda route: route.abort()))
    subscribe(page, channel)
    wait_open(page, "websocket")
    refused = page.evaluate(
        "(c) => r.client.publish(c, 'y'.repeat(1001)).then(() => null, e => e.code)", channel)
    assert refused == "request_entity_too_large"
    assert page.evaluate("r.states") == ["connecting", "open"] and len(page.sockets) == 1
    send(page, channel, "still here")
    assert fence(server.url, channel, page) == [["still here"]]


# -- tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_token_function_may_return_a_promise(make_server, open_client, transport):
    """token: () => fetch(...).then(...): the client waits for it, on every transport."""
    server = make_server(env={"WSRELAY_SECRET_KEY": SECRET})
    channel = f"private-team-{uuid.uuid4().hex[:8]}"
    page = open_client(server, transports=[transport])
    page.evaluate(
        "([token, transport]) => { window.asked = 0; r.client.close(); window.r = record({"
        " transports: [transport],"
        " token: () => new Promise(ok => setTimeout(() => (window.asked++, ok(token)), 50))}); }",
        [Tokens(SECRET).issue("private-team-*", publish=True, ttl=600), transport],
    )
    subscribe(page, channel)
    wait_open(page, transport)
    send(page, channel, "with an awaited token")
    assert wait_for(page, channel, "with an awaited token") == ["with an awaited token"]
    assert page.evaluate("r.errors") == []
    assert page.evaluate("window.asked") >= 1


def test_a_token_function_that_fails_is_reported_as_such(server, open_client):
    page = open_client(server)
    page.evaluate(
        "() => { r.client.close(); window.r = record({maxDelay: 500, token: () => 42}); }")
    page.wait_for_function("() => r.errors.length > 0")
    error = page.evaluate("r.errors[0]")
    assert error["code"] == "invalid_token_option" and "string" in error["message"]
    page.evaluate(
        "() => { r.client.close(); window.r = record({maxDelay: 500,"
        " token: () => Promise.reject(new Error('token endpoint said 500'))}); }")
    page.wait_for_function("() => r.errors.length > 0")
    error = page.evaluate("r.errors[0]")
    assert error["code"] == "token_unavailable" and "token endpoint said 500" in error["message"]
    assert page.evaluate("r.client.transport") == "websocket"  # no fallback for a token


# -- server time, sender, history -------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_meta_time_is_the_servers_publish_time_on_every_transport(
    server, channel, open_client, transport
):
    page = open_client(server, transports=[transport])
    subscribe(page, channel)
    wait_open(page, transport)
    message_id = publish(server.url, channel, "timed")
    publish(server.url, channel, b"\x00timed")
    wait_for(page, channel, "timed", [0, 116, 105, 109, 101, 100])
    stamped = {item["id"]: item["time"] for item in requests.get(
        f"{server.url}/poll/{channel}", params={"since": f"{message_id.split('-')[0]}-0",
                                                "timeout": 0}, timeout=5).json()["messages"]}
    metas = page.evaluate("(c) => r.metas[c]", channel)
    assert [meta["time"] for meta in metas] == [stamped[meta["id"]] for meta in metas]
    assert all("sender" not in meta for meta in metas)  # this server stamps no sender


def test_meta_sender_is_what_the_server_stamped(server, channel, open_client):
    """A server whose publish hook stamps a sender: the client passes it on as meta.sender."""

    def stamping(ws):
        upstream = ws.connect_to_server()

        def relay(message):
            envelope = json.loads(message)
            if envelope.get("type") == "message":
                envelope["sender"] = "user:ada"
            ws.send(json.dumps(envelope))

        upstream.on_message(relay)

    page = open_client(server, ws_route=stamping)
    subscribe(page, channel)
    publish(server.url, channel, "signed")
    wait_for(page, channel, "signed")
    assert page.evaluate("(c) => r.metas[c][0].sender", channel) == "user:ada"


def test_history_gives_the_last_messages_up_to_a_position(server, channel, open_client):
    ids = [publish(server.url, channel, f"old {n}") for n in range(6)]
    page = open_client(server)
    cursor = page.evaluate("(c) => r.subscribe(c)", channel)
    assert cursor == ids[-1]
    publish(server.url, channel, "live")
    wait_for(page, channel, "live")
    items = page.evaluate(
        "([c, cursor]) => r.client.history(c, {limit: 4, before: cursor})", [channel, cursor])
    assert [item["data"] for item in items] == [f"old {n}" for n in range(2, 6)]
    assert [item["meta"]["id"] for item in items] == ids[2:]
    assert all(isinstance(item["meta"]["time"], int) for item in items)
    latest = page.evaluate("(c) => r.client.history(c, {limit: 2})", channel)
    assert [item["data"] for item in latest] == ["old 5", "live"]
    assert page.evaluate("() => r.client.history('t-never-used', {limit: 5})") == []


# -- one connection per browser ---------------------------------------------------------


NO_SHARED_WORKER = "delete window.SharedWorker;"


@pytest.fixture
def open_tabs(browser):
    """``open_tabs(server, count, *init_scripts, **options)``: pages of one browser context
    (the tabs of one browser profile), each with ``window.r`` recording a client."""
    contexts = []

    def make(server, count: int, *init_scripts: str, **options) -> list[Page]:
        context = browser.new_context()
        for script in init_scripts:
            context.add_init_script(script)
        contexts.append(context)
        tabs = []
        for _ in range(count):
            tabs.append(open_tab(context, server, options))
        return tabs

    yield make
    for context in contexts:
        context.close()


def open_tab(context, server, options) -> Page:
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.goto(f"{server.url}/healthz")
    page.add_script_tag(url="/static/wsrelay.js")
    page.add_script_tag(content=RECORDER)
    page.evaluate("(options) => { window.r = record(options); }", {"share": True, **options})
    return page


def websockets_open(server) -> int:
    return requests.get(f"{server.url}/healthz", timeout=5).json()["connections"]


@pytest.mark.parametrize("mode", ["sharedworker", "leader"])
def test_tabs_share_one_connection(make_server, channel, open_tabs, mode):
    server = make_server(options=("--no-ticker",))
    tabs = open_tabs(server, 3, *([NO_SHARED_WORKER] if mode == "leader" else []))
    for tab in tabs:
        subscribe(tab, channel)
        wait_open(tab, "websocket")
    assert websockets_open(server) == 1  # three tabs, one WebSocket
    assert [tab.evaluate("r.client instanceof wsrelay.SharedClient") for tab in tabs] == [True] * 3
    for n, tab in enumerate(tabs):
        assert ID_PATTERN.fullmatch(send(tab, channel, f"from tab {n}"))
    publish(server.url, channel, b"\x01\x02")
    expected = ["from tab 0", "from tab 1", "from tab 2", [1, 2]]
    assert fence(server.url, channel, *tabs) == [expected] * 3
    for tab in tabs:
        no_duplicate_ids(tab, channel)
        assert tab.evaluate("(c) => r.client.presence(c)", channel) == 1  # one socket subscribed
    # A channel only one tab subscribed to reaches that tab only.
    subscribe(tabs[1], f"{channel}-b")
    publish(server.url, f"{channel}-b", "for tab 1")
    wait_for(tabs[1], f"{channel}-b", "for tab 1")
    assert received(tabs[0], f"{channel}-b") == []
    assert all(not tab.errors for tab in tabs)


@pytest.mark.parametrize("mode", ["sharedworker", "leader"])
def test_closing_a_tab_loses_nothing_for_the_others(make_server, channel, open_tabs, mode):
    """Messages keep coming while the first tab (the leader, without SharedWorker) closes:
    the other two get every one, once and in order; one WebSocket serves them after."""
    server = make_server(options=("--no-ticker",))
    tabs = open_tabs(server, 3, *([NO_SHARED_WORKER] if mode == "leader" else []))
    for tab in tabs:
        subscribe(tab, channel)
        wait_open(tab, "websocket")
    if mode == "leader":
        assert [tab.evaluate("r.client.leading") for tab in tabs] == [True, False, False]

    def produce() -> None:
        for n in range(40):
            publish(server.url, channel, f"m{n:02d}")
            gevent.sleep(0.025)

    producer = gevent.spawn(produce)
    gevent.sleep(0.3)
    tabs[0].close()
    producer.get(timeout=20)
    expected = [f"m{n:02d}" for n in range(40)]
    assert fence(server.url, channel, *tabs[1:]) == [expected, expected]
    for tab in tabs[1:]:
        no_duplicate_ids(tab, channel)
        assert state(tab) == "open"
    wait_until(lambda: websockets_open(server) == 1, timeout=10)
    send(tabs[2], channel, "after the handover")
    assert wait_for(tabs[1], channel, "after the handover")[-1] == "after the handover"
    if mode == "leader":
        assert sorted(tab.evaluate("r.client.leading") for tab in tabs[1:]) == [False, True]


def test_a_shared_connection_asks_a_tab_for_its_async_token(make_server, open_tabs):
    server = make_server(env={"WSRELAY_SECRET_KEY": SECRET}, options=("--no-ticker",))
    channel = f"private-team-{uuid.uuid4().hex[:8]}"
    tabs = open_tabs(server, 2)
    token = Tokens(SECRET).issue("private-team-*", publish=True, ttl=600)
    wait_until(lambda: websockets_open(server) == 1)
    for tab in tabs:  # the shared connection ends with its last tab's client
        tab.evaluate("r.client.close()")
    wait_until(lambda: websockets_open(server) == 0)
    for tab in tabs:
        tab.evaluate("(token) => { window.r = record({share: true,"
                     " token: () => Promise.resolve(token)}); }", token)
        subscribe(tab, channel)
    send(tabs[0], channel, "team only")
    send(tabs[1], channel, "and back")
    for tab in tabs:
        assert wait_for(tab, channel, "team only", "and back") == ["team only", "and back"]
    assert websockets_open(server) == 1


# -- loading -----------------------------------------------------------------------------


def test_the_client_loads_as_an_es_module(server, channel, browser):
    page, errors = new_page(browser)
    try:
        page.goto(f"{server.url}/healthz")
        loaded = page.evaluate(
            "() => import('/static/wsrelay.mjs').then(m => [typeof m.connect, m.SUBPROTOCOL,"
            " m.default === window.wsrelay, typeof m.Client])")
        assert loaded == ["function", "wsrelay.v1", True, "function"]
        page.evaluate(
            "(channel) => import('/static/wsrelay.mjs').then(m => { window.got = [];"
            " const client = m.connect(); return client.subscribe(channel, d => got.push(d)); })",
            channel)
        publish(server.url, channel, "as a module")
        page.wait_for_function("() => got.includes('as a module')")
        assert not errors
    finally:
        page.context.close()
