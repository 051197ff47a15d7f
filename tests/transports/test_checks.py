"""The admission checks' view of a request (ClientRequest), against werkzeug's."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsrelay.app import create_app
from wsrelay.transports.checks import ClientRequest


@pytest.fixture(scope="module")
def app():
    app = create_app({"WSRELAY_BROKER_URL": "memory://"})
    yield app
    app.extensions["wsrelay"].close()


QUERY = st.text(alphabet="ab=&;%+2Ft_ \u00e9", max_size=24)
NAMES = ("a", "b", "a b", "t", "ab", "é")  # wsrelay asks no empty name


@given(query=QUERY)
def test_query_parameters_read_as_werkzeug_reads_them(app, query):
    environ_query = query.encode().decode("latin-1")  # as a WSGI server passes it
    with app.test_request_context(environ_overrides={"QUERY_STRING": environ_query}) as context:
        expected = {name: context.request.args.get(name) for name in NAMES}
        client = ClientRequest({"QUERY_STRING": environ_query}, app.extensions["wsrelay"])
        assert {name: client.arg(name) for name in NAMES} == expected


def test_a_long_polls_query_is_read_without_decoding(app):
    client = ClientRequest({"QUERY_STRING": "timeout=30&since=1764546000000-0000000123&&x"},
                           app.extensions["wsrelay"])
    assert client.arg("timeout") == "30"
    assert client.arg("since") == "1764546000000-0000000123"
    assert client.arg("x") == ""
    assert client.arg("token") is None
