"""The access-facts cache: each user's memberships and roles, and the capability table.

The engine loads the facts of every user that needs them in one batched query; each entry
keeps the monotonic time its load was issued and the access epoch at that time. Every
access-change notification bumps the epoch: facts loaded before it, or being loaded, decide
nothing new (a new subscription, a scope change, a wall's filter) until a load issued after
it lands. A new subscription is decided on facts of the current epoch loaded at most
`NEW_FACTS_AGE` before it arrived; a load issued after it arrived always qualifies.
"""

from __future__ import annotations

import asyncio

from ..core.access import CapabilityTable, UserFacts
from ..core.clock import Clock
from ..database.storage import AccessSnapshot
from .watch import Subscription

FACTS_TIMEOUT = 10.0  # how long a handshake waits for its user's access facts
NEW_FACTS_AGE = 1.0  # a new subscription is decided on facts at most this old (seconds)


class FactsCache:
    def __init__(self, clock: Clock, recheck_interval: float) -> None:
        self.clock = clock
        self.recheck_interval = recheck_interval  # how long facts are fresh for a handshake
        self.capabilities = CapabilityTable()
        self.epoch = 0  # bumped by every access-change notification
        # user id -> (facts, monotonic time its load was issued, access epoch at that time)
        self._facts: dict[int, tuple[UserFacts, float, int]] = {}
        self._waiters: dict[int, list[asyncio.Future[UserFacts]]] = {}

    def access_changed(self) -> None:
        """Nothing loaded before now, or being loaded, is current any more."""
        self.epoch += 1

    def current(self, user_id: int | None) -> UserFacts | None:
        """A user's facts, unless an access change was notified since they were loaded."""
        cached = None if user_id is None else self._facts.get(user_id)
        if cached is None or cached[2] != self.epoch:
            return None
        return cached[0]

    def for_new(self, sub: Subscription) -> UserFacts | None:
        """Facts fit to decide a new subscription: current, and loaded at most
        NEW_FACTS_AGE before it arrived (a load issued after it arrived always is)."""
        cached = self._facts.get(sub.viewer.user_id) if sub.viewer.user_id is not None else None
        if cached is None or cached[2] != self.epoch:
            return None
        return cached[0] if cached[1] >= sub.arrived - NEW_FACTS_AGE else None

    def fresh(self, user_id: int) -> UserFacts | None:
        """A user's facts if current and loaded within the re-check interval: no load needed."""
        cached = self._facts.get(user_id)
        if cached is None or cached[2] != self.epoch or not self._recent(cached[1]):
            return None
        return cached[0]

    def store(self, snapshot: AccessSnapshot, loaded_at: float, epoch: int) -> None:
        """Take in a load issued at `loaded_at`, in `epoch`, and answer who waited for it."""
        self.capabilities = snapshot.capabilities
        for user_id, facts in snapshot.users.items():
            self._facts[user_id] = (facts, loaded_at, epoch)
            for waiter in self._waiters.pop(user_id, []):
                if not waiter.done():
                    waiter.set_result(facts)

    def prune(self, watching: set[int]) -> None:
        """Forget users who watch nothing, so the cache does not grow without bound."""
        for user_id, (_, loaded_at, _) in list(self._facts.items()):
            if user_id not in watching and not self._recent(loaded_at):
                del self._facts[user_id]

    def _recent(self, loaded_at: float) -> bool:
        return self.clock.monotonic() - loaded_at < self.recheck_interval

    # -- waiting for a load --------------------------------------------------------------

    def waiting_users(self) -> list[int]:
        return list(self._waiters)

    async def wait(self, user_id: int) -> UserFacts:
        """The user's facts from the next load that has them, within FACTS_TIMEOUT."""
        waiter: asyncio.Future[UserFacts] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(user_id, []).append(waiter)
        try:
            async with asyncio.timeout(FACTS_TIMEOUT):
                return await waiter
        finally:
            waiters = self._waiters.get(user_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[user_id]

    def cancel_waiters(self) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.cancel()
        self._waiters.clear()
