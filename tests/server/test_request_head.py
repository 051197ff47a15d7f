"""The framing rules of a request head, without sockets."""

import pytest

from wsrelay.server.request_head import framing_problem

HOST = ("Host", "relay.example")


@pytest.mark.parametrize("headers,version", [
    ([HOST], "HTTP/1.1"),
    ([HOST, ("Content-Length", "0")], "HTTP/1.1"),
    ([HOST, ("content-length", " 12 ")], "HTTP/1.1"),  # white space around a value is no part
    ([HOST, ("Content-Length", "10000000000")], "HTTP/1.1"),  # the size limit answers that
    ([HOST, ("Transfer-Encoding", "chunked")], "HTTP/1.1"),
    ([HOST, ("TRANSFER-ENCODING", "Chunked")], "HTTP/1.1"),  # coding names ignore case
    ([], "HTTP/1.0"),  # HTTP/1.0 may leave Host out
    ([("Content-Length", "5")], "HTTP/1.0"),
    ([HOST, ("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "10.0.0.2")], "HTTP/1.1"),
])
def test_clear_framing_passes(headers, version):
    assert framing_problem(headers, version) is None


@pytest.mark.parametrize("headers,version,reason", [
    ([HOST, ("Content-Length", "5"), ("Transfer-Encoding", "chunked")], "HTTP/1.1",
     "Content-Length and Transfer-Encoding together"),
    ([HOST, ("Transfer-Encoding", "chunked"), ("Content-Length", "0")], "HTTP/1.1",
     "Content-Length and Transfer-Encoding together"),
    ([HOST, ("Content-Length", "0"), ("Content-Length", "40")], "HTTP/1.1",
     "more than one Content-Length"),
    ([HOST, ("Content-Length", "5"), ("Content-Length", "5")], "HTTP/1.1",
     "more than one Content-Length"),
    ([HOST, ("Content-Length", "+1")], "HTTP/1.1", "invalid Content-Length '+1'"),
    ([HOST, ("Content-Length", "-1")], "HTTP/1.1", "invalid Content-Length '-1'"),
    ([HOST, ("Content-Length", " 1 2")], "HTTP/1.1", "invalid Content-Length '1 2'"),
    ([HOST, ("Content-Length", "0x10")], "HTTP/1.1", "invalid Content-Length '0x10'"),
    ([HOST, ("Content-Length", "1_0")], "HTTP/1.1", "invalid Content-Length '1_0'"),
    ([HOST, ("Content-Length", "5, 5")], "HTTP/1.1", "invalid Content-Length '5, 5'"),
    ([HOST, ("Content-Length", "\u0661")], "HTTP/1.1", "invalid Content-Length"),  # Arabic 1
    ([HOST, ("Content-Length", "")], "HTTP/1.1", "invalid Content-Length ''"),
    ([HOST, ("Transfer-Encoding", "xchunked")], "HTTP/1.1", "unsupported Transfer-Encoding"),
    ([HOST, ("Transfer-Encoding", "chunked, identity")], "HTTP/1.1",
     "unsupported Transfer-Encoding"),
    ([HOST, ("Transfer-Encoding", "gzip, chunked")], "HTTP/1.1",
     "unsupported Transfer-Encoding"),
    ([HOST, ("Transfer-Encoding", "gzip")], "HTTP/1.1", "unsupported Transfer-Encoding"),
    ([HOST, ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], "HTTP/1.1",
     "unsupported Transfer-Encoding"),
    ([HOST, ("Transfer-Encoding", "chunked\r\n x")], "HTTP/1.1",
     "unsupported Transfer-Encoding"),  # folded onto a second line
    ([("Transfer-Encoding", "chunked")], "HTTP/1.0", "Transfer-Encoding in an HTTP/1.0"),
    ([HOST, ("Host", "other.example")], "HTTP/1.1", "more than one Host"),
    ([HOST, ("host", "relay.example")], "HTTP/1.1", "more than one Host"),
    ([("Content-Length", "0")], "HTTP/1.1", "no Host header"),
    ([HOST, ("Content-Length ", "5")], "HTTP/1.1", "invalid header name"),
    ([HOST, ("X(y)", "1")], "HTTP/1.1", "invalid header name"),
])
def test_ambiguous_framing_is_refused_with_its_reason(headers, version, reason):
    assert reason in framing_problem(headers, version)
