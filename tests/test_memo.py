"""The bounded memo the long-poll's shared answers use."""

from wsrelay.memo import remember


def test_a_value_is_made_once_per_key_and_forgotten_all_at_once_when_full():
    memo: dict[str, str] = {}
    made: list[str] = []

    def make(key: str):
        return lambda: made.append(key) or key.upper()

    assert remember(memo, "a", make("a"), 2) == "A"
    assert remember(memo, "a", make("a"), 2) == "A"
    assert remember(memo, "b", make("b"), 2) == "B"
    assert made == ["a", "b"]

    assert remember(memo, "c", make("c"), 2) == "C"  # full: a and b forgotten
    assert memo == {"c": "C"}
    assert remember(memo, "a", make("a"), 2) == "A"
    assert made == ["a", "b", "c", "a"]
