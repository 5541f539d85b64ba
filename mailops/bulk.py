"""Helpers for the steps that build large numbers of objects at once."""

from __future__ import annotations

import atexit
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
            # permanent generation files it with the oldest instead (nothing else is
            # frozen before the process ends; see skip_collections_at_exit).
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def skip_collections_at_exit() -> None:
    """Leave everything the process built out of the cycle collector's passes at its end.

    Python's shutdown runs full collections over every object still alive, only to free
    memory that the end of the process frees anyway: after `mailops report` over a million
    outbox rows they took a second. Frozen objects are left out of them. The freeze runs
    among the exit handlers; what they build afterwards is collected as usual.
    """
    atexit.register(gc.freeze)
