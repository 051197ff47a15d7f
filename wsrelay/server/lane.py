"""A keep-alive client's next request that repeats its last one but for one query value.

A long-poll client asks the same thing again and again on its connection: the
same request line and headers, byte for byte, but for its cursor. Parsing that
head, building an environ, routing it and running every check again costs far
more than the poll's own work. So the direct path's application may say, for an
answer it gave, which query parameter a repeat may change and what answers such a
repeat (:data:`RERUN_KEY`, a :class:`Rerun`); the connection then keeps the head
as a template (:class:`Lane`). A next head equal to it but for that value, with
a value that needs no decoding, goes straight to the rerun, which runs again the
checks whose results can change (the rest depend on bytes that did not). Anything
else, or anything the rerun declines, is read and answered the usual way.
"""

from __future__ import annotations

from typing import Any, Protocol

#: In a direct-path request's environ after its application ran: the :class:`Rerun` that
#: answers the same request with a new value of its parameter.
RERUN_KEY = "wsrelay.rerun"
#: The characters a value may have to be taken from a repeat's bytes as they are: RFC 3986's
#: unreserved ones, which no query decoding changes.
_UNRESERVED = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


class Rerun(Protocol):
    """What answers a repeat of a request with a new value of its query parameter ``param``:
    a :class:`~wsrelay.server.parked.Pending`, an answer (status, headers, body), or None
    when the request must be read and answered the usual way (nothing was taken then). It
    runs in the event loop, and must not wait."""

    param: str

    def __call__(self, value: bytes) -> Any: ...


class Lane:
    """A connection's last request head as a template (see the module): :meth:`take` answers
    a next request that repeats it. ``close``: the template said ``Connection: close``."""

    __slots__ = ("_line", "close", "prefix", "rerun", "suffix", "value")

    def __init__(self, prefix: bytes, suffix: bytes, rerun: Rerun, close: bool) -> None:
        """``prefix`` and ``suffix``: the head before and after the value. (Compared as
        bytes: a pattern compiled per connection would cost a few hundred µs per new head.)"""
        self.prefix = prefix
        self.suffix = suffix
        line_end = suffix.find(b"\r\n")
        self._line = (prefix.decode("latin-1"), suffix[:line_end].decode("latin-1"))
        self.rerun = rerun
        self.close = close
        self.value = b""  # the value of the last repeat taken

    @classmethod
    def of(cls, head: bytes, rerun: Rerun, close: bool) -> Lane | None:
        """The lane of a request ``head`` (its bytes, the empty line included): None when
        its query has no value for ``rerun.param`` that a repeat could change."""
        line_end = head.find(b"\r\n")
        key = rerun.param.encode() + b"="
        at = head.find(b"?", 0, line_end)
        if at < 0:
            return None
        while True:  # the first time the parameter is given: the value a query reader takes
            at = head.find(key, at, line_end)
            if at < 0:
                return None
            if head[at - 1] in b"?&":
                break
            at += 1
        start = at + len(key)
        end = start
        while end < line_end and head[end] not in b"& #":
            end += 1
        if end == start:
            return None
        return cls(head[:start], head[end:], rerun, close)

    def take(self, data: bytes) -> Any:
        """Answer the request in ``data`` if it is all of it and repeats the template: what
        the rerun took (the request is read then), else None."""
        prefix, suffix = self.prefix, self.suffix
        end = len(data) - len(suffix)
        if end <= len(prefix) or not data.startswith(prefix) or not data.endswith(suffix):
            return None
        value = data[len(prefix):end]
        if value.translate(None, _UNRESERVED):  # something a query reader would decode
            return None
        self.value = value
        return self.rerun(value)

    def request_line(self) -> str:
        """The request line of the last repeat taken."""
        start, end = self._line
        return start + self.value.decode("latin-1") + end
