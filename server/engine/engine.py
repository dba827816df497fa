"""The subscription engine: one shared reader per channel, however many viewers watch it.

Each watched channel is a `Watch` (watch.py). A `Schedule` (schedule.py) keeps every watch's
next due time; at each tick the engine reads every due watch of a kind with one batched
query, hashes the new state, and the fan-out (fanout.py) hands it to the viewers whose last
state differs. The interval rules decide the next read; a terminal state is pushed once more
with `interval: null`, followed by `end`, and the watch is dropped. Access is decided per
(channel, user), from facts loaded in one batched query for all users that need them (the
cache in facts.py), and re-checked on a fixed cadence.

Never a byte out of scope: a read that moves a channel's scope (a run's workspace, tenant or
type; a card's workspace) decides every subscriber on the new scope before anything is pushed.
Nor before a revocation: once an access change is notified (the facts epoch moves), nothing
is pushed to a subscriber of any kind until a re-check on facts loaded after it decides it
(`Fanout.cleared`), so a state committed with its own revocation never travels before `end`.
A refusal only ever follows a read of the channel issued after the subscription arrived, so
it takes the same path whether or not someone else watches the channel; an allowed newcomer
of a live channel is served from memory. New subscriptions are decided on facts loaded at
most `NEW_FACTS_AGE` before they arrived and after the last access-change notification.

The engine never waits for a socket: viewers are handed frames through their `Outbox`.
All of it runs on one event loop, so no locks: state changes only between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable, Mapping
from datetime import timedelta
from typing import Any

from ..core import access, protocol, retry, rules, views
from ..core.access import Decision, RunScope, TenantScope, UserFacts
from ..core.channels import Channel, Kind
from ..core.clock import Clock, SystemClock
from ..database.storage import AccessSnapshot, Row, Storage
from ..tasks import cancel_and_wait
from .facts import FactsCache
from .failures import FailureLog
from .fanout import Fanout, set_state
from .schedule import Schedule
from .stats import EngineStats
from .watch import Subscription, Viewer, Watch

log = logging.getLogger("opspush.engine")

_ACCESS = "access"  # the in-flight key of access loads, beside the channel kinds


class Engine:
    def __init__(
        self,
        storage: Storage,
        *,
        clock: Clock | None = None,
        recheck_interval: float = 5.0,
        grid: float = 0.5,
        wall_max_runs: int = 500,
        stats: EngineStats | None = None,
    ) -> None:
        self.storage = storage
        self.clock: Clock = clock or SystemClock()
        self.recheck_interval = recheck_interval
        self.wall_max_runs = wall_max_runs
        self.stats = stats or EngineStats()
        self.watches: dict[Channel, Watch] = {}
        self._schedule = Schedule(grid)
        self._facts = FactsCache(self.clock, recheck_interval)
        self._fanout = Fanout(self.stats, self._facts, self._remove)
        self._attention: set[Channel] = set()  # answer newcomers; read unless fresh
        self._forced: set[Channel] = set()  # read at the next tick, fresh or not
        self._pending: dict[Channel, list[Subscription]] = {}  # waiting for a first answer
        self._read_seq = 0  # reads issued so far
        self._next_recheck = self.clock.monotonic() + recheck_interval
        self._access_retry = 0.0  # backoff of access loads while the database fails them
        self._access_retry_at = 0.0  # no access load before this (monotonic)
        self._wake = asyncio.Event()
        # At most one statement in flight per kind (and one access load): a slow one is not
        # queued behind, and the other kinds keep their cadence meanwhile.
        self._inflight: dict[Kind | str, asyncio.Task[None]] = {}
        self._failures = FailureLog(log, "database read")
        self._task: asyncio.Task[None] | None = None

    # -- lifetime ------------------------------------------------------------------------

    def start(self) -> None:
        assert self._task is None, "engine already started"
        self._task = asyncio.create_task(self._run(), name="opspush-engine")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        inflight = list(self._inflight.values())
        for job in inflight:
            job.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        self._inflight.clear()
        self._facts.cancel_waiters()

    @property
    def healthy(self) -> bool:
        """The latest statement of every kind succeeded."""
        return not self._failures.failing

    async def _run(self) -> None:
        while True:
            timeout = self._seconds_to_next_due()
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            try:
                self._start_due_work()
            except Exception:  # a bug must not end every subscription of the process
                log.exception("engine tick failed")
                await asyncio.sleep(1.0)

    def _seconds_to_next_due(self) -> float:
        now = self.clock.monotonic()
        candidates = [self._next_recheck]
        if self._access_retry_at > now:
            candidates.append(self._access_retry_at)  # facts someone waits for, retried then
        due = self._schedule.next_due(self.watches)
        if due is not None:
            candidates.append(due)
        return max(0.0, min(candidates) - now)

    def wake(self) -> None:
        self._wake.set()

    # -- viewers -------------------------------------------------------------------------

    async def user_facts(self, user_id: int) -> UserFacts:
        """The access facts of a user, loaded with everyone else's in the next tick."""
        facts = self._facts.fresh(user_id)
        if facts is not None:
            return facts
        self.wake()  # the tick it wakes runs once this awaits: it finds the waiter
        return await self._facts.wait(user_id)

    def subscribe(self, viewer: Viewer, channel: Channel, *, granted: bool = False) -> None:
        """Watch `channel` for `viewer`; its first answer (state or error) comes through the outbox.

        `granted`: the host already authorized this subscription, so it is not decided on the
        access tables nor re-checked; it is still `not_found` when the thing does not exist.
        A wall is filtered per user and can never be granted.
        """
        if granted and channel.kind is Kind.WALL:
            raise ValueError("a wall is filtered per user: it cannot be granted")
        if not granted and viewer.user_id is None:
            raise ValueError("a viewer without a user can only hold granted subscriptions")
        watch = self.watches.get(channel)
        if watch is None:
            watch = self.watches[channel] = Watch(channel, channel.name)
            self.stats.channels[channel.kind] += 1
        if viewer in watch.subs:
            return  # subscribing twice is a no-op: the first subscription stands
        sub = Subscription(
            viewer, granted=granted, arrived=self.clock.monotonic(), after_read=self._read_seq
        )
        watch.subs[viewer] = sub
        watch.active += 1
        self.stats.subscriptions[channel.kind] += 1
        self._pending.setdefault(channel, []).append(sub)
        if not self._fresh(watch):
            self._attention.add(channel)
            self.wake()
        elif granted or self._facts.for_new(sub) is not None:
            # A live channel: if allowed, the last state with no read; a refusal waits for
            # a read of the channel, as it would if nobody watched it.
            self._answer_pending(watch)
        else:
            # Its facts are loaded first: read the channel meanwhile, so that a refusal comes
            # after the same reads as for a channel nobody watches (a read and a facts load).
            self._forced.add(channel)
            self.wake()

    def unsubscribe(self, viewer: Viewer, channel: Channel) -> bool:
        watch = self.watches.get(channel)
        if watch is None or viewer not in watch.subs:
            return False
        self._remove(watch, viewer)
        return True

    def pause(self, viewer: Viewer, channel: Channel) -> None:
        sub = self._sub(viewer, channel)
        if sub is not None and not sub.paused:
            sub.paused = True
            self.watches[channel].active -= 1

    def resume(self, viewer: Viewer, channel: Channel) -> None:
        sub = self._sub(viewer, channel)
        if sub is None or not sub.paused:
            return
        sub.paused = False
        watch = self.watches[channel]
        watch.active += 1
        if not sub.accepted:
            return
        if self._fresh(watch) and not watch.stale:
            self._fanout.push_to(watch, sub, self._fanout.frame_for(watch, viewer.user_id))
        else:
            # Dormant or notified while everyone was paused: read it now. The read decides
            # everyone on the scope it finds before pushing (see `_apply`).
            self._forced.add(channel)
            self.wake()

    def drop_viewer(self, viewer: Viewer, channels: Iterable[Channel]) -> None:
        for channel in list(channels):
            watch = self.watches.get(channel)
            if watch is not None and viewer in watch.subs:
                self._remove(watch, viewer)

    def wake_channels(self, channels: Iterable[Channel]) -> None:
        """Read these channels at once (a change notification): still one query per kind."""
        woken = False
        for channel in channels:
            if channel in self.watches:
                self._forced.add(channel)
                woken = True
        if woken:
            self.wake()

    def wake_scopes(self, tenants: set[int], workspaces: set[int]) -> None:
        """Tenants or workspaces were deleted: read at once the runs and cards in them (now
        gone) and the walls that list such runs. Rare, so a scan of the live channels is fine."""

        def inside(scope: RunScope | TenantScope | None) -> bool:
            if scope is None:
                return False
            return scope.tenant_id in tenants or scope.workspace_id in workspaces

        self.wake_channels(
            watch.channel
            for watch in self.watches.values()
            if inside(watch.scope) or any(inside(scope) for scope, _ in watch.wall_runs)
        )

    def wake_all(self) -> None:
        """Re-read every live channel and re-check access at the next tick."""
        self._forced.update(self.watches)
        self.recheck_now()

    def doubt_access(self) -> None:
        """An access change was notified: facts loaded before now decide nothing new, and
        nothing is pushed on their strength; the re-check itself is `recheck_now`'s."""
        self._facts.access_changed()
        for watch in self.watches.values():
            watch.wall_frames = {}

    def recheck_now(self) -> None:
        """Re-check every subscription's access at the next tick (an access change).

        Facts loaded before now, or being loaded, decide nothing new after this: a new
        subscription, a scope change and a wall's filter wait for facts loaded after it.
        """
        self.doubt_access()
        self._next_recheck = self.clock.monotonic()
        self.wake()

    # -- the tick ------------------------------------------------------------------------

    async def tick(self) -> None:
        """Start everything due now and wait for it: how tests drive the engine step by step."""
        await self._settle(list(self._inflight.values()))
        await self._settle(self._start_due_work())

    @staticmethod
    async def _settle(jobs: list[asyncio.Task[None]]) -> None:
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)

    def _start_due_work(self) -> list[asyncio.Task[None]]:
        """Start the reads and the access load due now; never wait for the database here."""
        now = self.clock.monotonic()
        started = []
        by_kind: dict[Kind, list[tuple[Watch, bool]]] = {}
        for watch, forced in self._due_watches(now):
            by_kind.setdefault(watch.channel.kind, []).append((watch, forced))
        for kind, due in by_kind.items():
            if kind in self._inflight:
                # The previous read of this kind is still running (a slow database): these
                # are looked at again right after it, rather than queued behind it; a
                # newcomer's channel that read made fresh needs no read of its own.
                for watch, forced in due:
                    (self._forced if forced else self._attention).add(watch.channel)
                continue
            watches = [watch for watch, _ in due]
            # Numbered now, not when its task first runs: a refusal waiting for a read issued
            # after its subscription (see `_answer_pending`) must see this one as issued.
            self._read_seq += 1
            for watch in watches:
                watch.issued_seq = self._read_seq
            started.append(self._spawn(kind, self._read(kind, watches, self._read_seq)))

        recheck = now >= self._next_recheck
        users = {
            user_id for user_id in self._facts.waiting_users() if self._facts.fresh(user_id) is None
        }
        for waiting in self._pending.values():
            users.update(
                sub.viewer.user_id
                for sub in waiting
                if sub.viewer.user_id is not None
                and not sub.granted
                and self._facts.for_new(sub) is None
            )
        if recheck:
            users |= self._watching_users()
        backing_off = now < self._access_retry_at  # the last access load failed
        if (users or recheck) and _ACCESS not in self._inflight and not backing_off:
            started.append(self._spawn(_ACCESS, self._load_access(sorted(users), now, recheck)))
        self._answer_all_pending()
        return started

    def _spawn(self, key: Kind | str, job: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(job, name=f"opspush-read-{key}")
        self._inflight[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: Kind | str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if task.cancelled():
            return
        error = task.exception()
        now = self.clock.monotonic()
        if error is None:
            self._failures.succeeded(str(key), now)
        else:
            self._failures.failed(str(key), error, now)  # once per interval, not per attempt
        self.wake()  # work deferred behind this one may be waiting

    def _answer_all_pending(self) -> None:
        for channel in list(self._pending):
            watch = self.watches.get(channel)
            if watch is None:
                del self._pending[channel]
            elif watch.read_at is not None:
                self._answer_pending(watch)

    def _due_watches(self, now: float) -> list[tuple[Watch, bool]]:
        """The watches to read now, each with whether it must be read even if fresh."""
        scheduled: set[Channel] = set()
        for due, when in self._schedule.pop_due(now, self.watches):
            self.stats.observe_lag(now - when)
            scheduled.add(due.channel)
        forced = scheduled | self._forced
        candidates = forced | self._attention
        self._forced = set()
        self._attention = set()
        wanted = []
        for channel in candidates:
            watch = self.watches.get(channel)
            if watch is None:
                continue
            if watch.active == 0 and channel not in self._pending:
                # Everyone paused: no reads on their behalf; resume reads at once, and a
                # change notified meanwhile is not lost.
                watch.stale = watch.stale or channel in forced
                continue
            if channel not in forced and self._fresh(watch):
                continue  # a newcomer to a live channel is served from memory
            if channel not in scheduled and self._backing_off(watch, now):
                continue  # its retry, scheduled, reads it (it is stale: nothing is lost)
            wanted.append((watch, channel in forced))
        return wanted

    async def _load_access(self, user_ids: list[int], now: float, recheck: bool) -> None:
        epoch = self._facts.epoch  # a notification while this runs makes its facts stale
        if user_ids:
            self.stats.access_loads += 1
            try:
                snapshot: AccessSnapshot = await self.storage.read_access(user_ids)
            except Exception:
                # Not a busy loop against a database that fails: no access load (for a
                # re-check, a hello or a newcomer) before the backoff, within the re-check
                # interval.
                self._access_retry = retry.backoff(
                    self._access_retry, retry.ACCESS_RETRY_FIRST, self.recheck_interval
                )
                self._access_retry_at = self.clock.monotonic() + self._access_retry
                if recheck:
                    self._next_recheck = self._access_retry_at
                raise
            self._access_retry = 0.0
            self._facts.store(snapshot, now, epoch)
        if recheck:
            if epoch == self._facts.epoch:  # else re-check again at once, on newer facts
                self._next_recheck = self.clock.monotonic() + self.recheck_interval
            self._recheck_all()
            self._facts.prune(self._watching_users())
        self._answer_all_pending()

    async def _read(self, kind: Kind, watches: list[Watch], seq: int) -> None:
        issued = self.clock.monotonic()  # the state read is as of now, however long it takes
        ids = [w.channel.id for w in watches]
        for watch in watches:
            watch.stale = False  # a notification from now on marks it again
        self.stats.reads[kind] += 1
        self.stats.channel_reads[kind] += len(ids)
        try:
            if kind is Kind.RUN:
                runs = await self.storage.read_runs(ids)
                self._apply(watches, runs, self._apply_run, issued, seq)
            elif kind is Kind.REVIEW_PACK:
                cards = await self.storage.read_pack_cards(ids)
                self._apply(watches, cards, self._apply_card, issued, seq)
            else:
                since = self.clock.now() - timedelta(seconds=rules.WALL_RECENT_SECONDS)
                walls = await self.storage.read_walls(ids, since, self.wall_max_runs)
                self._apply(watches, walls, self._apply_wall, issued, seq)
            self._answer_all_pending()
        except Exception:
            self.stats.read_errors += 1
            now = self.clock.monotonic()
            for watch in watches:
                watch.stale = True  # what changed meanwhile is still to be read
                # Retry soon, backing off while the database keeps failing.
                watch.retry_delay = retry.backoff(
                    watch.retry_delay, retry.READ_RETRY_FIRST, retry.READ_RETRY_MAX
                )
                self._schedule.put(watch, now + watch.retry_delay)
            raise

    def _apply(
        self, watches: list[Watch], found: Mapping[int, Any], apply: Any, issued: float, seq: int
    ) -> None:
        """Take in read `seq`, issued at `issued`: the next one is due an interval after that."""
        now = issued
        for watch in watches:
            if self.watches.get(watch.channel) is not watch:
                continue  # everyone left while the query ran
            watch.retry_delay = 0.0
            watch.read_seq = seq
            value = found.get(watch.channel.id)
            if value is None:
                self._missing(watch, issued)
                continue
            scope = watch.scope
            interval = apply(watch, value)
            moved = watch.existed and watch.scope != scope
            watch.existed = True
            if moved:  # before anything is pushed: not a byte of the new state out of scope
                self._decide_watchers(watch, hold_unknown=True)
            watch.read_at = now
            watch.interval = interval
            if interval is None:
                watch.final = True
                watch.next_due = None
                self._fanout.finish(watch)
            else:
                self._schedule.after_read(watch, now, interval)
                self._fanout.push_all(watch)

    def _apply_run(self, watch: Watch, row: Row) -> int | None:
        interval = views.run_interval(row, self.clock.now())
        watch.scope = views.run_scope(row)
        set_state(watch, protocol.encode(views.run_data(row)), interval)
        return interval

    def _apply_card(self, watch: Watch, row: Row) -> int | None:
        pack = row if row["id"] is not None else None
        interval = views.pack_interval(pack)
        watch.scope = views.tenant_scope(row)
        data = views.pack_data(row["tenant_id"], pack, tenant_name=row["tenant_name"])
        set_state(watch, protocol.encode(data), interval)
        return interval

    def _apply_wall(self, watch: Watch, rows: list[Row]) -> int | None:
        now = self.clock.now()
        ordered = views.wall_rows(rows)
        watch.wall_runs = [
            (views.run_scope(row), protocol.encode(views.run_data(row))) for row in ordered
        ]
        watch.wall_frames = {}
        interval = views.wall_interval(ordered, now)
        watch.interval = interval
        return interval  # a wall never ends

    def _missing(self, watch: Watch, issued: float) -> None:
        """Not in the database: `gone` for those who saw it, `not_found` for newcomers.

        A newcomer is refused like any other, after the read (`_answer_all_pending`, in the
        order the subscriptions arrived), so that a missing thing and one out of scope cost
        the same reads and the same time.
        """
        for viewer, sub in list(watch.subs.items()):
            if sub.accepted:
                self._fanout.end(watch, viewer, "gone")
        watch.existed = False
        watch.read_at = issued
        watch.scope = None
        self._drop_if_empty(watch)

    def _remove(self, watch: Watch, viewer: Viewer) -> None:
        sub = watch.subs.pop(viewer, None)
        if sub is None:
            return
        if not sub.paused:
            watch.active -= 1
        self.stats.subscriptions[watch.channel.kind] -= 1
        pending = self._pending.get(watch.channel)
        if pending and sub in pending:
            pending.remove(sub)
            if not pending:
                del self._pending[watch.channel]
        self._drop_if_empty(watch)

    def _drop_if_empty(self, watch: Watch) -> None:
        if not watch.subs and self.watches.get(watch.channel) is watch:
            del self.watches[watch.channel]
            self._pending.pop(watch.channel, None)
            self.stats.channels[watch.channel.kind] -= 1

    # -- access --------------------------------------------------------------------------

    def _decide(self, watch: Watch, facts: UserFacts) -> Decision:
        caps = self._facts.capabilities
        kind = watch.channel.kind
        if not facts.exists:
            return "not_found"
        if kind is Kind.RUN:
            scope = watch.scope if isinstance(watch.scope, RunScope) else None
            return access.decide_run(facts, caps, scope if watch.existed else None)
        if kind is Kind.REVIEW_PACK:
            tenant = watch.scope if isinstance(watch.scope, TenantScope) else None
            return access.decide_review_pack(facts, caps, tenant if watch.existed else None)
        return access.decide_wall(facts, caps, watch.channel.id, watch.existed)

    def _answer_pending(self, watch: Watch) -> None:
        """Accept or refuse the subscriptions waiting on this watch, where facts allow.

        An allowed newcomer gets the latest state, from memory if need be; a refusal waits
        for a read of the channel issued after the subscription arrived, so that neither
        its timing nor the counters tell whether someone else watches the channel.
        """
        waiting = self._pending.get(watch.channel, [])
        still: list[Subscription] = []
        reread = False
        for sub in list(waiting):
            if sub.granted:
                decision: Decision = "allowed" if watch.existed else "not_found"
            else:
                facts = self._facts.for_new(sub)
                if facts is None:
                    still.append(sub)  # its facts are being loaded
                    continue
                decision = self._decide(watch, facts)
            if decision != "allowed":
                if watch.read_seq <= sub.after_read:
                    still.append(sub)  # decided on a read from before it arrived: read again
                    reread = reread or watch.issued_seq <= sub.after_read
                else:
                    self._fanout.refuse(watch, sub, decision)
                continue
            sub.accepted = True
            self._fanout.push_to(watch, sub, self._fanout.frame_for(watch, sub.viewer.user_id))
            if watch.final:
                self._fanout.end(watch, sub.viewer, "terminal")
        if still:
            self._pending[watch.channel] = still
        else:
            self._pending.pop(watch.channel, None)
        if reread and watch.channel not in self._forced:
            # Once: this runs inside the tick too, where a wake for work already queued
            # would spin the engine's loop without ever letting the read land.
            self._forced.add(watch.channel)
            self.wake()
        if watch.final:
            self._drop_if_empty(watch)

    def _recheck_all(self) -> None:
        for watch in list(self.watches.values()):
            if watch.read_at is None:
                continue
            watch.wall_frames = {}  # visibility on a wall may have changed too
            self._decide_watchers(watch, hold_unknown=False)
            # Walls refiltered, held viewers released: only what differs travels.
            if watch.final:
                self._fanout.finish(watch)
            else:
                self._fanout.push_all(watch)

    def _decide_watchers(self, watch: Watch, *, hold_unknown: bool) -> None:
        """Decide every accepted subscriber on the watch's latest scope, with current facts.

        One who lost access gets `end revoked`; one who is allowed is no longer held. One
        whose facts are not current (an access change is being loaded) is left as it is, or
        held when `hold_unknown` (its channel's scope just moved): nothing reaches it until
        a re-check on current facts decides it (the fan-out holds it too, on any push).
        """
        decisions: dict[int, Decision | None] = {}
        for viewer, sub in list(watch.subs.items()):
            if not sub.accepted or sub.granted:
                continue  # a granted subscription is the host's to revoke
            user_id = viewer.user_id
            assert user_id is not None
            if user_id not in decisions:
                facts = self._facts.current(user_id)
                decisions[user_id] = None if facts is None else self._decide(watch, facts)
            decision = decisions[user_id]
            if decision is None:
                sub.held = sub.held or hold_unknown
            elif decision != "allowed":
                self._fanout.end(watch, viewer, "revoked")
            else:
                sub.held = False

    def _watching_users(self) -> set[int]:
        """The users whose access decides at least one subscription."""
        return {
            user_id
            for watch in self.watches.values()
            for user_id in _decided_users(watch.subs.values())
        }

    # -- scheduling ----------------------------------------------------------------------

    def _fresh(self, watch: Watch) -> bool:
        """Read recently enough that a newcomer may be served from memory."""
        if watch.read_at is None:
            return False
        if watch.final:
            return True
        return watch.next_due is not None and watch.next_due > self.clock.monotonic()

    @staticmethod
    def _backing_off(watch: Watch, now: float) -> bool:
        """Its last read failed and its retry is not due yet."""
        return watch.retry_delay > 0 and watch.next_due is not None and watch.next_due > now

    def _sub(self, viewer: Viewer, channel: Channel) -> Subscription | None:
        watch = self.watches.get(channel)
        return None if watch is None else watch.subs.get(viewer)


def _decided_users(subs: Iterable[Subscription]) -> set[int]:
    """The users whose facts decide these subscriptions (granted ones need none)."""
    return {
        sub.viewer.user_id for sub in subs if not sub.granted and sub.viewer.user_id is not None
    }
