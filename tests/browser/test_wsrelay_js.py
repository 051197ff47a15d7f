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

import uuid

import pytest
import requests
from playwright.sync_api import Page

from tests.browser import NO_EVENTSOURCE, NO_WEBSOCKET, TIMEOUT, new_page, publish
from wsrelay.auth import Tokens

pytestmark = pytest.mark.timeout(30)

TRANSPORTS = ["websocket", "sse", "poll"]
SECRET = "wsrelay-js-test-secret-key-of-enough-length"

#: What a page records of its client: messages per channel as [data, meta.id, meta.channel]
#: (binary data as a list of byte values), states, transport changes, errors, resets.
RECORDER = """
window.record = (options) => {
  const client = wsrelay.connect(options);
  const r = {client, got: {}, states: [client.state], transports: [], errors: [], resets: []};
  client.on('state', (state) => r.states.push(state));
  client.on('transport', (transport) => r.transports.push(transport));
  client.on('error', (e) => r.errors.push({message: e.message, code: e.code, channel: e.channel}));
  r.subscribe = (channel) => client.subscribe(channel, (data, meta) => {
    (r.got[channel] = r.got[channel] || []).push(
      [typeof data === 'string' ? data : Array.from(data), meta.id, meta.channel]);
  }, {onReset: (channel, cursor) => r.resets.push([channel, cursor])});
  return r;
};
"""


@pytest.fixture
def open_client(browser):
    """``open_client(server, *init_scripts, ws_route=None, **options)``: a page whose
    ``window.r`` records a ``wsrelay.connect(options)`` client. ``ws_route`` stands between
    the page and the server's ``/ws`` (Playwright's WebSocket route: a proxy in the test's
    hands). The page's WebSocket URLs are in ``page.sockets``."""
    opened: list[tuple[Page, list[str]]] = []

    def make(server, *init_scripts: str, ws_route=None, **options) -> Page:
        page, errors = new_page(browser, *init_scripts)
        opened.append((page, errors))
        page.sockets = []
        page.on("websocket", lambda ws: page.sockets.append(ws.url))
        if ws_route is not None:
            page.route_web_socket("**/ws", ws_route)
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
