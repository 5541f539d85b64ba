"""Crash points for the fault-injection tests: the worker kills itself at a named step of an import.

``MAILOPS_TEST_CRASH_AT=STEP`` (or ``STEP:N``, the Nth time the step is reached) makes the
process send itself SIGKILL there: no ``finally``, no flush, no rollback, exactly as an outside
``kill -9`` or a power cut at that instant. Only the tests set it; unset, a crash point costs one
environment lookup. Steps: after-fetch, after-raw-write, after-commit, before-delete, after-delete.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter

CRASH_AT = "MAILOPS_TEST_CRASH_AT"
STEPS = frozenset({"after-fetch", "after-raw-write", "after-commit", "before-delete", "after-delete"})

_reached: Counter[str] = Counter()
_lock = threading.Lock()


def crash_point(step: str) -> None:
    """Die here by SIGKILL when the tests asked for it (see the module doc)."""
    wanted = os.environ.get(CRASH_AT)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != step:
        return
    with _lock:
        _reached[step] += 1
        if _reached[step] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
