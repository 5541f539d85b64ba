"""Keeping a worker's leases (mailops.state.leases) while it works: renewal on a thread of its own, and
a stop signal for each account whose lease is lost.

The keeper renews every third of the lease's duration, so that two renewals may fail (a slow or
briefly unreachable database) before anything expires. A lease is lost when a renewal finds that
another worker holds it now (this one stalled past the expiry and was taken over), or when no renewal
has succeeded for a whole duration (the others may have taken it over without this worker knowing).
The account's import then stops after its current batch: what it committed stays, and the new owner
carries on from there; the state store refuses a second copy of a message, so an overlap of one batch
imports nothing twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

from mailops.errors import MailopsError
from mailops.state.leases import LeaseOwner, Leases

HELD_BY_ANOTHER = "another worker took it over (this one did not renew it in time)"


class AccountStop(threading.Event):
    """The stop signal of one account's work: set on its own when the account's lease is lost, and read
    as set as soon as any of ``also`` is (the whole worker stopping, say)."""

    def __init__(self, *also: threading.Event):
        super().__init__()
        self._also = also

    def is_set(self) -> bool:
        return super().is_set() or any(event.is_set() for event in self._also)

    @property
    def lease_lost(self) -> bool:
        """Set on its own: the account's lease is lost (not the whole worker stopping)."""
        return super().is_set()


class LeaseKeeper:
    """Renews ``owner``'s leases until closed; tells ``on_lost(resource, why)`` of each lease it loses and
    ``on_renewal_failed(why)`` of the first renewal that fails after one that worked. ``stop`` is the
    whole worker's stop signal, part of every account's."""

    def __init__(
        self,
        leases: Leases,
        owner: LeaseOwner,
        seconds: float,
        *,
        stop: threading.Event,
        on_lost: Callable[[str, str], None],
        on_renewal_failed: Callable[[str], None],
    ):
        self.leases, self.owner, self.seconds = leases, owner, seconds
        self.worker_stop, self.on_lost, self.on_renewal_failed = stop, on_lost, on_renewal_failed
        # Held while a claim or a renewal talks to the database: a renewal never sees a lease that the
        # worker is freeing at that moment as lost.
        self.lock = threading.Lock()
        self._held: dict[str, AccountStop] = {}
        self._valid_until = 0.0  # time.monotonic() until which the held leases are certainly ours
        self._renew_failed = False
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailops-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join()

    def hold(self, resources: Collection[str], since: float) -> None:
        """What the worker holds now, as claimed at ``since`` (time.monotonic() before the claim); call
        with :attr:`lock` held. Each resource gets a fresh stop signal."""
        self._held = {resource: AccountStop(self.worker_stop) for resource in resources}
        self._valid_until = since + self.seconds

    def stop_of(self, resource: str) -> threading.Event:
        """The stop signal of ``resource``'s work (the worker's, for a resource not held)."""
        return self._held.get(resource.lower(), self.worker_stop)

    @property
    def held(self) -> list[str]:
        return sorted(self._held)

    def _run(self) -> None:
        while not self._closing.wait(self.seconds / 3):
            self.renew()

    def renew(self) -> None:
        """One renewal; the thread calls it every third of the lease's duration."""
        with self.lock:
            started = time.monotonic()
            held = dict(self._held)
            try:
                still = self.leases.renew(self.owner, held, self.seconds)
            except MailopsError as error:
                if not self._renew_failed:
                    self.on_renewal_failed(str(error))
                self._renew_failed = True
                if time.monotonic() < self._valid_until:
                    return
                still = set()  # a whole duration without renewal: others may hold them by now
                why = "no renewal succeeded for a whole lease duration"
            else:
                self._renew_failed = False
                self._valid_until = started + self.seconds
                why = HELD_BY_ANOTHER
            for resource, stop in held.items():
                if resource not in still and not stop.is_set():
                    stop.set()
                    self._held.pop(resource, None)
                    self.on_lost(resource, why)
