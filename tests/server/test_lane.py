"""A connection's lane (server/lane.py): which next request repeats its last one, without
sockets."""

from __future__ import annotations

import pytest

from wsrelay.server.lane import Lane


class Rerun:
    """A rerun that records the values it was given and takes them all (or none)."""

    param = "since"

    def __init__(self, takes: bool = True) -> None:
        self.values: list[bytes] = []
        self.takes = takes

    def __call__(self, value: bytes) -> object:
        self.values.append(value)
        return ("taken", value) if self.takes else None


def head(target: str, *fields: str) -> bytes:
    lines = "".join(f"{field}\r\n" for field in ("Host: relay.test", *fields))
    return f"GET {target} HTTP/1.1\r\n{lines}\r\n".encode()


def lane(target: str, *fields: str, takes: bool = True) -> tuple[Lane, Rerun]:
    rerun = Rerun(takes)
    made = Lane.of(head(target, *fields), rerun, close=False)
    assert made is not None
    return made, rerun


@pytest.mark.parametrize("target", [
    "/poll/news?since=1-2&timeout=30",
    "/poll/news?timeout=30&since=1-2",
    "/poll/news?timeout=30&since=1-2&token=abc",
])
def test_a_repeat_with_another_value_goes_to_the_rerun_with_that_value(target):
    made, rerun = lane(target, "Origin: https://relay.test")
    repeat = head(target.replace("since=1-2", "since=0001796-0000000042"),
                  "Origin: https://relay.test")
    assert made.take(repeat) == ("taken", b"0001796-0000000042")
    assert made.take(bytearray(repeat)) == ("taken", b"0001796-0000000042")
    assert rerun.values == [b"0001796-0000000042"] * 2


@pytest.mark.parametrize("repeat", [
    head("/poll/other?timeout=30&since=5-6"),  # another channel
    head("/poll/news?timeout=31&since=5-6"),  # another timeout
    head("/poll/news?timeout=30&since=5-6", "Origin: https://evil.test"),  # another header
    head("/poll/news?timeout=30&since=5-6").replace(b"relay.test", b"RELAY.test"),
    head("/poll/news?timeout=30&since=5%2D6"),  # a value a query reader decodes
    head("/poll/news?timeout=30&since=5+6"),
    head("/poll/news?timeout=30&since=5-6&since=7-8"),  # the value read is not the one cut
    head("/poll/news?timeout=30&since="),  # no value
    head("/poll/news?timeout=30&since=5-6") + head("/poll/news?timeout=30&since=7-8"),
    head("/poll/news?timeout=30&since=5-6")[:-2],  # not all of a head
])
def test_anything_but_a_whole_repeat_is_left_to_the_usual_path(repeat):
    made, rerun = lane("/poll/news?timeout=30&since=1-2")
    assert made.take(repeat) is None
    assert rerun.values == []


def test_what_the_rerun_declines_is_left_to_the_usual_path():
    made, rerun = lane("/poll/news?since=1-2", takes=False)
    assert made.take(head("/poll/news?since=3-4")) is None
    assert rerun.values == [b"3-4"]


@pytest.mark.parametrize("target", [
    "/poll/news",  # no query
    "/poll/news?timeout=30",  # no value to change
    "/poll/news?since=&timeout=30",  # an empty one
    "/poll/news?xsince=1-2",  # another parameter that ends like it
    "/poll/since=1-2",  # in the path, not the query
])
def test_a_request_without_a_value_to_change_has_no_lane(target):
    assert Lane.of(head(target), Rerun(), close=False) is None


def test_the_first_value_given_is_the_one_a_repeat_changes():
    made, _ = lane("/poll/news?since=1-2&since=3-4")
    assert made.take(head("/poll/news?since=9-9&since=3-4")) == ("taken", b"9-9")
    assert made.take(head("/poll/news?since=1-2&since=9-9")) is None
