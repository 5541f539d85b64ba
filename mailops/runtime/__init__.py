"""The worker (`mailops run`): ticket import, the archive with its retention, auto-replies and bounces.

:func:`run_once` is one pass over the accounts; :mod:`mailops.runtime.ticket_import` holds the
import of one account and the reasons for its order of steps; :mod:`mailops.runtime.archive`,
:mod:`mailops.runtime.autoreply` and :mod:`mailops.runtime.bounces` what it does with the mail.
"""

from mailops.runtime.ticket_import import ImportReport
from mailops.runtime.worker import AccountRun, UnknownAccount, run_once

__all__ = ["AccountRun", "ImportReport", "UnknownAccount", "run_once"]
