"""The Python API: publish from anywhere, background tasks started once."""

import gevent
import pytest

import wsrelay
from wsrelay import create_app
from wsrelay.errors import InvalidChannel, MessageTooLarge, NoRelay, WsrelayError


@pytest.fixture
def app():
    app = create_app({"WSRELAY_MAX_MESSAGE_SIZE": 1000, "WSRELAY_SUBSCRIBER_BUFFER": 10_000})
    yield app
    app.extensions["wsrelay"].close()


def history(app, channel):
    from wsrelay.ids import MessageId

    return app.extensions["wsrelay"].hub.broker.history(channel, MessageId(0, 0)).messages


def in_app(app, function):
    """``function`` for a greenlet of its own, which gets no context from its spawner."""

    def run(*args):
        with app.app_context():
            return function(*args)

    return run


def test_publish_in_the_app_context_and_in_a_greenlet_given_it(app):
    with app.app_context():
        message = wsrelay.publish("news", "hello")
        binary = gevent.spawn(in_app(app, wsrelay.publish), "news", b"\x00\x01").get(5)
    assert [m.id for m in history(app, "news")] == [message.id, binary.id]
    assert binary.binary and not message.binary


def test_publish_checks_channel_and_size_with_errors_of_one_tree(app):
    with app.app_context():
        with pytest.raises(InvalidChannel):
            wsrelay.publish("bad channel", "x")
        with pytest.raises(MessageTooLarge):
            wsrelay.publish("news", "x" * 1001)
    assert issubclass(InvalidChannel, WsrelayError) and issubclass(InvalidChannel, ValueError)
    assert wsrelay.MessageTooLarge is MessageTooLarge


def test_publish_without_an_app_says_what_to_do(app, monkeypatch):
    monkeypatch.delenv("WSRELAY_BROKER_URL", raising=False)
    with pytest.raises(NoRelay, match=r"WSRELAY_BROKER_URL=redis://.*app_context"):
        wsrelay.publish("news", "x")


def test_with_two_apps_publish_goes_to_the_current_one(app):
    other = create_app()
    try:
        with other.app_context():
            wsrelay.publish("news", "to other")
        assert [m.data for m in history(other, "news")] == [b"to other"]
        assert history(app, "news") == []
    finally:
        other.extensions["wsrelay"].close()


def test_background_task_starts_once(app):
    relay = app.extensions["wsrelay"]
    ticks = []

    def ticker():  # no app context of its own: start_background_task gives it the app's
        while True:
            ticks.append(wsrelay.publish("ticker", str(len(ticks) + 1)))
            gevent.sleep(0.01)

    first = relay.start_background_task(ticker)
    assert relay.start_background_task(ticker) is first
    gevent.sleep(0.1)
    first.kill()
    assert len(ticks) >= 3
    assert [m.data for m in history(app, "ticker")][:3] == [b"1", b"2", b"3"]


@pytest.fixture
def cross_origin_app():
    app = create_app({"WSRELAY_ALLOWED_ORIGINS": ("https://app.example",)})
    yield app
    app.extensions["wsrelay"].close()


def test_allowed_origins_may_read_the_http_transports(cross_origin_app):
    web = cross_origin_app.test_client()
    origin = {"Origin": "https://app.example"}
    published = web.post("/publish/news", data="hi", headers=origin)
    assert published.status_code == 200
    assert published.headers["Access-Control-Allow-Origin"] == "https://app.example"
    polled = web.get("/poll/news?timeout=0", headers=origin)
    assert polled.headers["Access-Control-Allow-Origin"] == "https://app.example"
    preflight = web.options("/publish/news", headers={
        **origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    })
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


def test_a_foreign_origin_gets_neither_an_answer_nor_cors_headers(cross_origin_app):
    web = cross_origin_app.test_client()
    refused = web.post("/publish/news", data="hi", headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_without_allowed_origins_there_are_no_cors_headers(app):
    answer = app.test_client().get("/poll/news?timeout=0",
                                   headers={"Origin": "http://localhost"})
    assert answer.status_code == 200
    assert "Access-Control-Allow-Origin" not in answer.headers


# -- a guest in someone else's app ----------------------------------------------------------


def host_routes(app):
    """A host's own pages, as a Flask developer writes them: a session login, its own `/`,
    `/metrics`, a forbidden page, a POST-only form and a bug."""
    from flask import abort, session

    @app.route("/")
    def home():
        return "host home"

    @app.route("/metrics")
    def host_metrics():
        return "host metrics"

    @app.route("/login/<name>")
    def login(name):
        session["user"] = name
        return "hello " + name

    @app.route("/admin")
    def admin():
        abort(403)

    @app.route("/form", methods=["POST"])
    def form():
        return "posted"

    @app.route("/bug")
    def bug():
        raise RuntimeError("a bug of the host")


def host_factory(relay, *, before: bool, **config):
    """An app factory: the host's routes registered before or after ``relay.init_app``."""
    from flask import Flask

    app = Flask("host")
    app.secret_key = "host-secret"
    app.config.update(config)
    if before:
        host_routes(app)
    relay.init_app(app)
    if not before:
        host_routes(app)
    return app


@pytest.fixture(params=["host routes first", "wsrelay first"])
def host(request):
    relay = wsrelay.Relay()
    app = host_factory(relay, before=request.param == "host routes first")
    yield app
    app.extensions["wsrelay"].close()


def test_the_host_keeps_its_own_routes(host):
    web = host.test_client()
    assert web.get("/").get_data(as_text=True) == "host home"
    assert web.get("/metrics").get_data(as_text=True) == "host metrics"
    assert web.get("/login/ada").get_data(as_text=True) == "hello ada"


def test_the_host_keeps_its_own_errors(host):
    web = host.test_client()
    for answer, status in [(web.get("/admin"), 403), (web.get("/form"), 405),
                           (web.get("/bug"), 500), (web.get("/nothing-here"), 404)]:
        assert answer.status_code == status
        assert answer.mimetype == "text/html", answer.get_data(as_text=True)


def test_wsrelay_answers_its_own_routes_and_errors_in_json(host):
    web = host.test_client()
    script = web.get("/static/wsrelay.js")
    assert script.status_code == 200 and "wsrelay" in script.get_data(as_text=True)
    dashboard = web.get("/dashboard")
    assert dashboard.status_code == 200 and b"wsrelay dashboard" in dashboard.data
    assert web.get(dashboard.data.split(b'<script src="')[1].split(b'"')[0].decode()
                   ).status_code == 200  # the dashboard's own script, from the package
    assert web.get("/healthz").json["status"] == "ok"
    for answer, status in [(web.get("/poll/bad%20name"), 400), (web.get("/publish/news"), 405),
                           (web.get("/ws/news"), 426), (web.get("/sse"), 404)]:
        assert answer.status_code == status
        assert answer.json["error"], answer.get_data(as_text=True)


def test_the_demo_page_is_opt_in(host):
    assert host.test_client().get("/").get_data(as_text=True) == "host home"
    relay = wsrelay.Relay()
    demo = host_factory(relay, before=False, WSRELAY_DEMO_PAGE="1", WSRELAY_URL_PREFIX="/rt")
    try:
        page = demo.test_client().get("/rt/")
        assert page.status_code == 200 and b"wsrelay demo" in page.data
        assert b'src="/rt/static/wsrelay.js"' in page.data
    finally:
        demo.extensions["wsrelay"].close()


def test_a_url_prefix_moves_every_route():
    relay = wsrelay.Relay()
    app = host_factory(relay, before=True, WSRELAY_URL_PREFIX="/realtime")
    try:
        web = app.test_client()
        assert web.get("/realtime/poll/news?timeout=0").status_code == 200
        assert web.get("/realtime/static/wsrelay.js").status_code == 200
        assert web.get("/poll/news?timeout=0").mimetype == "text/html"  # the host's 404
        assert app.app_protocol("/realtime/ws") == "wsrelay.v1"
        assert app.app_protocol("/ws") is None
    finally:
        app.extensions["wsrelay"].close()


def test_the_stock_handler_is_offered_the_subprotocol_without_create_app(host):
    assert host.app_protocol("/ws") == "wsrelay.v1"
    assert host.app_protocol("/ws/room") == "wsrelay.v1"
    assert host.app_protocol("/chat") is None


def test_one_relay_serves_several_apps_each_with_its_own_state():
    relay = wsrelay.Relay()
    first, second = (host_factory(relay, before=True) for _ in range(2))
    try:
        assert first.extensions["wsrelay"] is not second.extensions["wsrelay"]
        with first.app_context():
            relay.publish("news", "to the first")
        with second.app_context():
            assert relay.hub is second.extensions["wsrelay"].hub
        assert [m.data for m in history(first, "news")] == [b"to the first"]
        assert history(second, "news") == []
        with pytest.raises(NoRelay):
            relay.publish("news", "no app here")
    finally:
        for app in (first, second):
            app.extensions["wsrelay"].close()


def test_the_hosts_logging_is_left_alone():
    import logging

    logger = logging.getLogger("wsrelay")
    handlers, level = list(logger.handlers), logger.level
    app = host_factory(wsrelay.Relay(), before=True, WSRELAY_LOG_FORMAT="json")
    app.extensions["wsrelay"].close()
    assert logger.propagate  # the host's handlers on the root logger see wsrelay's lines
    assert (logger.handlers, logger.level) == (handlers, level)


def test_app_config_strings_are_parsed_as_the_environment_would_be():
    """One origin, not its characters: 'h' is refused, the named origin admitted."""
    relay = wsrelay.Relay()
    app = host_factory(relay, before=True, WSRELAY_ALLOWED_ORIGINS="https://app.example.com",
                       WSRELAY_REQUIRE_TOKEN="0", WSRELAY_MAX_MESSAGE_SIZE="2048")
    try:
        web = app.test_client()
        assert web.get("/poll/news?timeout=0", headers={"Origin": "h"}).status_code == 403
        assert web.get("/poll/news?timeout=0",
                       headers={"Origin": "https://app.example.com"}).status_code == 200
        assert web.post("/publish/news", data="x" * 2049).status_code == 413
    finally:
        app.extensions["wsrelay"].close()


def test_a_bad_option_of_the_host_fails_at_init_with_one_line():
    from flask import Flask

    app = Flask("host")
    app.config["WSRELAY_HISTORY_SIZ"] = 10
    with pytest.raises(wsrelay.ConfigError, match="did you mean WSRELAY_HISTORY_SIZE"):
        wsrelay.Relay(app)


# -- hooks ----------------------------------------------------------------------------------


def test_hooks_identify_refuse_replace_and_stamp_the_sender_over_http():
    from flask import session

    relay = wsrelay.Relay()
    seen = []

    @relay.identity_hook
    def who(request, claims):
        return session.get("user")

    @relay.publish_hook
    def moderate(publication):
        seen.append(publication)
        if "spam" in publication.data:
            raise wsrelay.Refuse("no spam")
        return publication.data.upper()

    app = host_factory(relay, before=True)
    try:
        web = app.test_client()
        web.get("/login/ada")
        assert web.post("/publish/lobby", data="hi").status_code == 200
        refused = web.post("/publish/lobby", data="spam")
        assert (refused.status_code, refused.json["error"], refused.json["message"]) == (
            403, "refused", "no spam")
        [item] = web.get("/poll/lobby?timeout=0&since=0-0").json["messages"]
        assert (item["data"], item["sender"]) == ("HI", "ada")
        assert [(p.channel, p.data, p.identity, p.transport) for p in seen] == [
            ("lobby", "hi", "ada", "http"), ("lobby", "spam", "ada", "http")]
        anonymous = app.test_client().post("/publish/lobby", data="who?")
        assert anonymous.status_code == 200  # no identity: no sender stamped
        with app.app_context():
            wsrelay.publish("lobby", "from the server")  # the application's own: no hooks
        assert len(seen) == 3
        items = web.get("/poll/lobby?timeout=0&since=0-0").json["messages"]
        assert [i.get("sender") for i in items] == ["ada", None, None]
    finally:
        app.extensions["wsrelay"].close()
