"""Redis Cluster slots: the relay's own keys land in the slot of the channel they serve."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from wsrelay.broker.redis.slots import SLOTS, channel_slot, slot_key, slot_tag
from wsrelay.channels import CHANNEL_PATTERN


def test_every_slot_has_a_short_tag_of_its_own():
    tags = [slot_tag(slot) for slot in range(SLOTS)]
    assert [key_slot(f"{{{tag}}}".encode()) for tag in tags] == list(range(SLOTS))
    assert {len(tag) for tag in tags} == {4} and not any("{" in t or "}" in t for t in tags)


@given(st.from_regex(CHANNEL_PATTERN, fullmatch=True))
def test_a_channels_slot_key_shares_the_slot_of_its_keys(channel):
    slot = channel_slot(channel)
    assert slot == key_slot(f"wsrelay:{{{channel}}}:state".encode())
    assert slot == key_slot(f"wsrelay:{{{channel}}}:log".encode())
    assert key_slot(slot_key("wsrelay", slot, "origin").encode()) == slot
