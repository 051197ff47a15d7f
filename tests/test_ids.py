import pytest

from wsrelay.ids import InvalidMessageId, MessageId, new_epoch


def test_round_trip_and_order():
    ids = [MessageId(1700000000000, seq) for seq in (1, 2, 10, 11)] + [MessageId(1700000000001, 1)]
    texts = [str(i) for i in ids]
    assert [MessageId.parse(t) for t in texts] == ids
    assert sorted(texts) == texts, "ids of one channel sort as plain strings"
    assert sorted(ids) == ids


@pytest.mark.parametrize("text", ["", "abc", "1-", "-1", "1-2-3", "1.2", " 1-2", "9" * 17 + "-1"])
def test_garbage_is_refused(text):
    with pytest.raises(InvalidMessageId):
        MessageId.parse(text)


def test_new_epoch_is_always_greater():
    far_future = 10**15
    assert new_epoch(far_future) == far_future + 1
    assert new_epoch() > 1_600_000_000_000
