"""Reading a message as the publish script writes it (``epoch seq ms binary sender_len
author_len\\n`` + sender + author + data), byte for byte, without Redis."""

from __future__ import annotations

import pytest

from wsrelay.broker.redis.codec import decode
from wsrelay.ids import MessageId
from wsrelay.message import Message


@pytest.mark.parametrize(("payload", "expected"), [
    (b"1700000000000 7 1700000000123 0 0 0\nhello",
     Message("c", MessageId(1700000000000, 7), b"hello", False, None, 1700000000.123, None)),
    ("1 2 3000 1 5 7\nwsé1\u00e9ditor\n\x00\r\n".encode(),
     Message("c", MessageId(1, 2), b"\n\x00\r\n", True, "wsé1", 3.0, "éditor")),
    (b"1 2 3000 0 0 5\nalice", Message("c", MessageId(1, 2), b"", False, None, 3.0, "alice")),
    (b"5 9 1000 0 2 0\nab\n", Message("c", MessageId(5, 9), b"\n", False, "ab", 1.0, None)),
    # written before authors existed: five numbers, no author
    (b"5 9 1000 1 2\nab\xff\n", Message("c", MessageId(5, 9), b"\xff\n", True, "ab", 1.0, None)),
], ids=["plain", "binary-sender-author", "author-only", "newline-data", "no-author-field"])
def test_decode_reads_every_part_exactly(payload, expected):
    message = decode("c", payload)
    assert message == expected
    assert (message.time, message.author, message.sender) == (
        expected.time, expected.author, expected.sender)
