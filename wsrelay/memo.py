"""A bounded memo for values many requests share (a long-poll's answer, its response bytes).

Forgetting everything at once when full is enough here: the values are remade on the
next miss, and the keys that matter (the answers to the latest messages) come back at once.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def remember(memo: dict[K, V], key: K, make: Callable[[], V], limit: int) -> V:
    """``memo[key]``, made by ``make()`` on a miss; ``memo`` is emptied first when it holds
    ``limit`` values."""
    value = memo.get(key)
    if value is None:
        if len(memo) >= limit:
            memo.clear()
        value = memo[key] = make()
    return value
