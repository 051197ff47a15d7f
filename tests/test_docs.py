"""The README and docs/ are part of the product: their commands, options, links and examples
must stay true. Examples are run for real: servers on free ports, Chromium for the browser's."""

from __future__ import annotations

import re
import shlex
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.support import PYTHON, Closed, Refused, ServerProcess, free_port, wait_until
from wsrelay.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

#: A fenced block: its language, its text, and the line its text starts on.
FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.S | re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(lang: str, pages: list[Path] = PAGES) -> list[Block]:
    found = []
    for page in pages:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == lang:
                line = text.count("\n", 0, match.start(2)) + 1
                found.append(Block(page, lang, match.group(2), line))
    return found


def block(page: Path, lang: str, containing: str) -> Block:
    """The one ``lang`` block of ``page`` that contains ``containing``."""
    found = [b for b in blocks(lang, [page]) if containing in b.text]
    assert len(found) == 1, f"{len(found)} {lang} blocks of {page.name} contain {containing!r}"
    return found[0]


def prose(text: str) -> str:
    """``text`` without its fenced blocks and inline code: what is rendered as Markdown."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+).*?\1", "", text, flags=re.S)


# -- the README ---------------------------------------------------------------------------


def test_readme_starts_with_the_serve_and_test_commands():
    text = README.read_text()
    found = re.findall(r"```sh\n(.*?)```", text, re.S)
    assert text.startswith("```sh\n")
    serve, test = found[0].strip(), found[1].strip()
    assert "manage.py serve" in serve
    assert "pytest" in test and "ruff check" in test and "mypy" in test
    assert test in (ROOT / ".ci" / "run").read_text(), ".ci/run runs the README's test command"


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= 200, f"README.md has {lines} lines: move the detail to docs/"


# -- configuration ------------------------------------------------------------------------


def test_every_option_is_documented_with_its_default():
    table = (ROOT / "docs" / "configuration.md").read_text()
    for option in OPTIONS:
        row = re.search(rf"^\| `{option.name}` \| (.*?) \|", table, re.M)
        assert row, f"{option.name} missing from docs/configuration.md"
        default = option.default
        if isinstance(default, bool):
            default = int(default)
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        if isinstance(default, tuple) and default:
            default = " ".join(default)
        if default in ("", ()):
            assert "empty" in row.group(1)
        else:
            assert f"`{default}`" in row.group(1), f"{option.name}: default {default}"


# -- links and paths ----------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lowercased, punctuation dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of ``page``'s headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", page.read_text()), re.M):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def test_slugs_follow_githubs_rules():
    assert slug("The wsrelay.v1 subprotocol") == "the-wsrelayv1-subprotocol"
    assert slug("Redis Cluster (designed, not yet shipped)") == (
        "redis-cluster-designed-not-yet-shipped")
    assert slug("`manage.py stats`") == "managepy-stats"
    assert slug("[The protocol](protocol.md): *ids*") == "the-protocol-ids"


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file.relative_to(ROOT)}")
        elif anchor and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


#: A path of this repository, in inline code or in a command.
PATH = re.compile(r"`((?:wsrelay|tests|docs|templates|\.ci)/[^`\s]*)`")
COMMAND_PATH = re.compile(r"(?<![\w/.])((?:wsrelay|tests|docs|templates|\.ci)/[\w./*-]*)")


def test_every_repository_path_the_docs_name_exists():
    named = [(page, path) for page in PAGES for path in PATH.findall(page.read_text())]
    named += [(sh.page, path) for sh in blocks("sh") for path in COMMAND_PATH.findall(sh.text)]
    assert len(named) > 20, named
    missing = []
    for page, path in named:
        if "<" in path:  # a pattern such as tests/<package>/test_<module>.py
            continue
        if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
            missing.append(f"{page.name}: {path}")
    assert not missing, missing


def test_the_module_table_names_every_module():
    table = (ROOT / "docs" / "architecture.md").read_text()
    package = ROOT / "wsrelay"
    unnamed = [
        str(module.relative_to(ROOT)) for module in sorted(package.rglob("*.py"))
        if module.name != "__init__.py" and "bench" not in module.relative_to(package).parts
        and f"`{module.name}`" not in table and f"/{module.name}`" not in table
    ]
    assert not unnamed, f"modules without a row in docs/architecture.md: {unnamed}"


# -- commands -----------------------------------------------------------------------------


def manage_commands() -> list[tuple[str, list[str]]]:
    """Each ``python manage.py ...`` of a sh block, as (where, arguments)."""
    found = []
    for sh in blocks("sh"):
        for number, line in enumerate(sh.text.splitlines()):
            for command in re.findall(r"python manage\.py ([^#&|;]*)", line):
                found.append((f"{sh.page.name}:{sh.line + number}", shlex.split(command)))
    return found


def test_every_manage_py_command_exists_with_its_options():
    from wsrelay.cli import cli

    commands = manage_commands()
    assert len(commands) >= 8, commands
    wrong = []
    for where, (name, *args) in commands:
        command = cli.commands.get(name)
        if command is None:
            wrong.append(f"{where}: no command {name!r}")
            continue
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)
                   if opt.startswith("-")}
        wrong += [f"{where}: {name} has no option {arg}" for arg in args
                  if arg.startswith("-") and arg.split("=")[0] not in options]
    assert not wrong, wrong


# -- Python examples ----------------------------------------------------------------------


@pytest.mark.parametrize("example", blocks("python"), ids=str)
def test_every_python_block_compiles(example):
    compile(example.text, str(example), "exec")


def in_process(example: Block, config: dict | None = None) -> tuple[dict, object]:
    """Run ``example`` in this process (in the app context of a fresh app); its namespace and
    the app. The caller closes the app's relay."""
    from wsrelay import create_app

    app = create_app(config)
    namespace: dict = {}
    with app.app_context():
        exec(compile(example.text, str(example), "exec"), namespace)
    return namespace, app


def test_the_publishing_example_publishes_text_and_binary():
    example = block(ROOT / "docs" / "python-api.md", "python", 'wsrelay.publish("news", "hello")')
    namespace, app = in_process(example)
    relay = app.extensions["wsrelay"]
    try:
        from wsrelay.ids import MessageId

        stored = relay.hub.broker.history("news", MessageId(0, 0)).messages
        assert [(m.data, m.binary) for m in stored] == [
            (b"hello", False), (b"\x00\x01", True), (b"x", False)]
        assert namespace["message"].id == stored[-1].id
    finally:
        relay.close()


def test_the_embedding_example_configures_the_relay_and_issues_a_token():
    example = block(ROOT / "docs" / "python-api.md", "python", "relay.tokens.issue(")
    namespace: dict = {}
    exec(compile(example.text, str(example), "exec"), namespace)
    app, relay = namespace["app"], namespace["relay"]
    try:
        assert app.config["WSRELAY_HISTORY_SIZE"] == 100
        claims = relay.tokens.verify(namespace["token"])
        assert claims.grants("private-user-42", "publish")
        assert claims.subject == "42"
    finally:
        relay.close()


#: Around a fragment that uses ``app`` and serves nothing itself: the rest of a server.
SERVE = """
from wsrelay.server.handler import RelayHandler
from gevent.pywsgi import WSGIServer
WSGIServer(("127.0.0.1", {port}), app, handler_class=RelayHandler).serve_forever()
"""
PATCH = "from gevent import monkey\nmonkey.patch_all()\n"


def start_script(code: str, tmp_path: Path, port: int) -> ServerProcess:
    script = tmp_path / f"example_{uuid.uuid4().hex[:8]}.py"
    script.write_text(code)
    return ServerProcess.start([PYTHON, str(script)], port, env=None)


def start_example(example: Block, tmp_path: Path) -> ServerProcess:
    """A whole server example, as written, on a free port instead of 5000."""
    listen = '("127.0.0.1", 5000)'
    assert example.text.count(listen) == 1, f"{example}: serves on {listen}"
    port = free_port()
    return start_script(example.text.replace(listen, f'("127.0.0.1", {port})'), tmp_path, port)


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory):
    """The README's server example, running."""
    example = block(README, "python", "@app.post")
    server = start_example(example, tmp_path_factory.mktemp("readme"))
    yield server
    server.stop()


@pytest.mark.e2e
def test_the_readme_server_relays_what_its_route_and_clients_publish(readme_server):
    with readme_server.ws("/ws/orders") as subscriber, readme_server.ws("/ws/orders") as client:
        answer = requests.post(f"{readme_server.url}/orders/coffee", timeout=5)
        assert answer.status_code == 200, answer.text
        assert subscriber.recv() == "new order: coffee"
        assert client.recv() == "new order: coffee"
        client.send("new order: cake")
        assert subscriber.recv() == "new order: cake"
    assert re.fullmatch(r"\d+-\d+", answer.json()["id"])


@pytest.mark.e2e
def test_the_ticker_example_pushes_one_count_per_tick(tmp_path):
    example = block(ROOT / "docs" / "python-api.md", "python", "start_background_task(ticker)")
    server = start_example(example, tmp_path)
    try:
        with server.ws("/ws/ticker") as client:
            first = int(client.recv(timeout=8))
            second = int(client.recv(timeout=8))
        assert second == first + 1, "one ticker, started once"
    finally:
        server.stop()


@pytest.mark.e2e
def test_the_own_route_example_relays_or_refuses_before_the_upgrade(tmp_path):
    example = block(ROOT / "docs" / "python-api.md", "python", 'websocket=True)')
    port = free_port()
    code = PATCH + textwrap.dedent("""
        import wsrelay
        app = wsrelay.create_app()
        def user_may_join(room):
            return room != "secret"
        """) + example.text + SERVE.format(port=port)
    server = start_script(code, tmp_path, port)
    try:
        with server.ws("/chat/lobby") as ada, server.ws("/chat/lobby") as bob:
            ada.send("hello")
            assert bob.recv() == "hello"
            assert ada.recv() == "hello"
        with pytest.raises(Refused) as refused:
            server.ws("/chat/secret")
        assert refused.value.status == 403
        assert b'"forbidden"' in refused.value.body
    finally:
        server.stop()


@pytest.mark.e2e
def test_the_connect_hook_example_refuses_non_members_and_muted_publishers(tmp_path):
    example = block(ROOT / "docs" / "security.md", "python", "@relay.connect_hook")
    port = free_port()
    code = PATCH + textwrap.dedent("""
        from types import SimpleNamespace
        USERS = {"ada": SimpleNamespace(team="a", muted=False),
                 "bob": SimpleNamespace(team="a", muted=True)}
        sessions = SimpleNamespace(user_from_cookie=USERS.get)
        """) + example.text + SERVE.format(port=port)
    server = start_script(code, tmp_path, port)
    try:
        with server.ws("/ws/team-a", headers={"Cookie": "sid=ada"}) as ada:
            ada.send("hi team")
            assert ada.recv() == "hi team"
        with pytest.raises(Refused) as outsider:
            server.ws("/ws/team-a")
        assert outsider.value.status == 403
        assert b"members of the team only" in outsider.value.body
        muted = requests.post(f"{server.url}/publish/team-a", data="hi",
                              headers={"Cookie": "sid=bob"}, timeout=5)
        assert (muted.status_code, muted.json()["error"]) == (403, "refused")
        with server.ws("/ws/team-a", headers={"Cookie": "sid=bob"}) as bob:
            bob.send("hi")  # may subscribe, not publish: closed at the first message
            with pytest.raises(Closed) as closed:
                bob.recv()
        assert closed.value.code == 1008
    finally:
        server.stop()


# -- browser examples ---------------------------------------------------------------------


def open_example(browser, server: ServerProcess, html: str):
    """A page of the server's own origin whose body is ``html``; its console lines and errors.
    (A document the server sent, then rewritten: Chromium lets only a page that came from a
    local address open WebSockets to one.)"""
    from tests.browser import new_page

    page, errors = new_page(browser)
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(f"{server.url}/healthz")  # any document of the server's origin
    page.set_content(f"<!doctype html><html><body>{html}</body></html>")
    return page, console, errors


@pytest.mark.e2e
def test_the_readme_browser_example_lists_every_order_once(browser, readme_server):
    example = block(README, "html", "wsrelay.connect()")
    page, _, errors = open_example(browser, readme_server, example.text)
    try:
        items = "() => [...document.querySelectorAll('#orders li')].map(li => li.textContent)"
        page.wait_for_function(f"() => ({items})().some(t => t.endsWith('new order: tea'))")
        requests.post(f"{readme_server.url}/orders/coffee", timeout=5).raise_for_status()
        page.wait_for_function(f"() => ({items})().some(t => t.endsWith('new order: coffee'))")
        shown = page.evaluate(items)
        assert [text.split(" ", 1)[1] for text in shown] == ["new order: tea", "new order: coffee"]
        assert all(re.fullmatch(r"\d+-\d+ new order: \w+", text) for text in shown), shown
        assert page.evaluate("client.transport") == "websocket"
        assert not errors
    finally:
        page.context.close()


@pytest.mark.e2e
def test_the_browser_client_example_subscribes_and_publishes(browser, readme_server):
    example = block(ROOT / "docs" / "browser-client.md", "html", "wsrelay.connect()")
    page, console, errors = open_example(browser, readme_server, example.text)
    try:
        def logged(prefix: str) -> str | None:
            page.wait_for_timeout(50)  # lets Playwright deliver the console events
            return next((line for line in console if line.startswith(prefix)), None)

        published = wait_until(lambda: logged("published as "), 10)
        received = wait_until(lambda: logged("lobby "), 10)
        message_id = published.removeprefix("published as ")
        shown = re.fullmatch(r"(lobby \S+) (.+ GMT[^{]*) (\{.*\})", received)
        assert shown, received
        head, shown_time, data = shown.groups()
        assert head == f"lobby {message_id}"
        assert data == '{"nick":"ada","text":"hi"}'
        assert abs(page.evaluate(f"Date.now() - Date.parse({shown_time!r})")) < 60_000, shown_time
        assert wait_until(lambda: logged("open over "), 10) == "open over websocket"
        assert not errors
    finally:
        page.context.close()
