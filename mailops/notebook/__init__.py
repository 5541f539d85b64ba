"""ipywidgets front ends for the notebooks in notebooks/: thin, over the same library API as the CLI.

- :class:`ConnectAccount`: connect a Microsoft 365, Google or IMAP-SMTP account (`mailops connect`);
- :class:`TestMail`: send a test mail now (`mailops test-mail`);
- :class:`PlanApply`: the plan in colour, and apply with a progress bar (`mailops plan` / `apply`);
- :class:`OutboxExplorer`: filters, charts and a paged table of the outbox log (`mailops outbox`).

Each widget is built from child widgets that are its attributes: a test (or a notebook run
headless) sets their ``.value`` and calls ``.click()`` on their buttons. The widgets are
imported on first use, so that ``ConnectAccount`` does not pay for pandas and matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from mailops.notebook.common import visible_text

if TYPE_CHECKING:
    from mailops.notebook.connect import ConnectAccount
    from mailops.notebook.explorer import OutboxExplorer
    from mailops.notebook.planapply import PlanApply
    from mailops.notebook.testmail import TestMail

__all__ = ["ConnectAccount", "OutboxExplorer", "PlanApply", "TestMail", "visible_text"]

_MODULES = {
    "ConnectAccount": "mailops.notebook.connect",
    "OutboxExplorer": "mailops.notebook.explorer",
    "PlanApply": "mailops.notebook.planapply",
    "TestMail": "mailops.notebook.testmail",
}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return getattr(import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
