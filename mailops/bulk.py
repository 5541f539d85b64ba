"""Helpers for the steps that build large numbers of objects at once."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector while a step builds many objects and no cycles.

    Loading a large spec, reading the state and planning make hundreds of thousands of
    dicts, lists and models, all kept until the step ends: the collector's passes over
    them while they grow find nothing to free and only cost time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            # Whatever the step built is still in the youngest generation, and the first
            # collection after the pause would walk all of it. Passing it through the
            # permanent generation files it with the oldest instead (mailops freezes
            # nothing else that this would thaw).
            gc.freeze()
            gc.unfreeze()
            gc.enable()
