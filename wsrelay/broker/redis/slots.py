"""Redis Cluster's hash slots: which slot a channel's keys live in, and a key of the relay's
own (one of no channel, like the origin) that lives in the same slot.

Cluster refuses a script whose keys lie in different slots, so the keys a
channel's script touches besides the channel's own (``<prefix>:{<channel>}:...``)
must share its slot: :func:`slot_key` names one per slot, through a hash tag
that hashes to that slot (:func:`slot_tag`, computed, not searched for).
"""

from __future__ import annotations

from binascii import crc_hqx
from functools import cache

#: Hash slots of a Redis Cluster.
SLOTS = 16384


def channel_slot(channel: str) -> int:
    """The slot of every key of ``channel``: they share the hash tag ``{<channel>}`` (names
    have no braces, see :data:`~wsrelay.channels.CHANNEL_PATTERN`; nor has the prefix), so
    the slot is the channel name's."""
    return crc_hqx(channel.encode(), 0) % SLOTS


#: A tag is four characters of ``@ABCDEFGHIJKLMNO`` (``0x40`` plus a nibble each): CRC16
#: with a zero start is linear over XOR, so the tag's 16 free bits map to the CRC by a
#: bit matrix, whose 14 rows of the slot's bits have full rank: each slot's tag is found by
#: solving it.
_BASE = b"@@@@"


@cache
def _inverse() -> tuple[int, ...]:
    """For each bit of the slot, the free bits of the tag that flip it alone."""
    start = crc_hqx(_BASE, 0)
    rows = []  # (crc change, free bits) for each free bit, then reduced
    for bit in range(16):
        tag = bytearray(_BASE)
        tag[bit // 4] ^= 1 << (bit % 4)
        rows.append(((crc_hqx(bytes(tag), 0) ^ start) % SLOTS, 1 << bit))
    for target in range(SLOTS.bit_length() - 1):  # Gauss-Jordan over GF(2)
        pivot = next(i for i in range(target, 16) if rows[i][0] >> target & 1)
        rows[target], rows[pivot] = rows[pivot], rows[target]
        for i in range(16):
            if i != target and rows[i][0] >> target & 1:
                rows[i] = (rows[i][0] ^ rows[target][0], rows[i][1] ^ rows[target][1])
    return tuple(free for _, free in rows[:SLOTS.bit_length() - 1])


@cache
def slot_tag(slot: int) -> str:
    """A hash tag whose keys live in ``slot``: four characters."""
    change = (slot ^ crc_hqx(_BASE, 0)) % SLOTS
    free = 0
    for bit, flips in enumerate(_inverse()):
        if change >> bit & 1:
            free ^= flips
    return bytes(_BASE[i] ^ (free >> (4 * i) & 15) for i in range(4)).decode()


def slot_key(prefix: str, slot: int, name: str) -> str:
    """The relay's own key ``name`` for ``slot``: ``<prefix>:{<tag>}:<name>``."""
    return f"{prefix}:{{{slot_tag(slot)}}}:{name}"
