"""Pausing the cycle collector for a large step loses no collection after it."""

from __future__ import annotations

import gc
import weakref

from mailops.bulk import cycle_collector_paused


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_the_collector_is_back_after_the_pause_and_collects_what_the_pause_left() -> None:
    assert gc.isenabled()
    with cycle_collector_paused():
        assert not gc.isenabled()
        with cycle_collector_paused():
            pass
        assert not gc.isenabled(), "an inner pause must not end the outer one"
        first, second = _Node(), _Node()
        first.other, second.other = second, first
        gone = weakref.ref(first)
        del first, second
    assert gc.isenabled()
    assert gone() is not None  # a cycle: only the collector frees it
    gc.collect()
    assert gone() is None, "a cycle built during the pause must stay collectable"
    assert gc.get_freeze_count() == 0
