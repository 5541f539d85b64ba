"""The worker (`mailops run`): ticket import now; the archive with retention and auto-replies come later.

:func:`run_once` is one pass over the accounts; :mod:`mailops.runtime.ticket_import` holds
the import of one account and the reasons for its order of steps.
"""

from mailops.runtime.ticket_import import ImportReport
from mailops.runtime.worker import AccountRun, UnknownAccount, run_once

__all__ = ["AccountRun", "ImportReport", "UnknownAccount", "run_once"]
