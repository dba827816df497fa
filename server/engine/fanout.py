"""Fan-out: a watch's latest state, `end` and refusals, handed to its viewers.

The engine never waits for a socket: viewers are handed frames through their `Outbox`, and
only changes travel (a viewer's last digest is kept per subscription). A run or a card is
one frame for everyone; a wall is filtered per user, on that user's current facts, and its
frames are cached per user until the next read or access change. Whatever the kind, nothing
is pushed to a subscription whose user's facts are not current (`cleared`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..core import access, protocol
from ..core.access import Decision
from ..core.channels import Kind
from .facts import FactsCache
from .stats import EngineStats
from .watch import Subscription, Viewer, Watch

Rendered = tuple[bytes, str]  # the digest of a state's data, and its frame


def _digest(data_json: str) -> bytes:
    return hashlib.blake2b(data_json.encode(), digest_size=16).digest()


def set_state(watch: Watch, data_json: str, interval: int | None) -> None:
    """The frame of a run's or a card's latest state, rebuilt only when it changed."""
    new_digest = _digest(data_json)
    if new_digest != watch.digest or interval != watch.interval:
        watch.digest = new_digest
        watch.frame = protocol.state_frame(watch.name, data_json, interval)


class Fanout:
    def __init__(
        self,
        stats: EngineStats,
        facts: FactsCache,
        remove: Callable[[Watch, Viewer], None],  # the engine forgets a subscription
    ) -> None:
        self.stats = stats
        self.facts = facts
        self.remove = remove

    def frame_for(self, watch: Watch, user_id: int | None) -> Rendered | None:
        if watch.channel.kind is not Kind.WALL:
            if watch.digest is None or watch.frame is None:
                return None
            return watch.digest, watch.frame
        assert user_id is not None, "walls are never granted"
        cached = watch.wall_frames.get(user_id)
        if cached is not None:
            return cached
        facts = self.facts.current(user_id)
        if facts is None:
            return None  # held until its facts are current again
        visible = [
            run_json
            for scope, run_json in watch.wall_runs
            if access.visible_on_wall(facts, self.facts.capabilities, scope)
        ]
        data_json = f'{{"workspace_id":{watch.channel.id},"runs":[{",".join(visible)}]}}'
        rendered = (_digest(data_json), protocol.state_frame(watch.name, data_json, watch.interval))
        watch.wall_frames[user_id] = rendered
        return rendered

    def cleared(self, sub: Subscription) -> bool:
        """May anything be pushed to `sub` now? Not while its user's facts are in doubt.

        Once an access change is notified (or the facts are otherwise not current), the
        subscription is held until a re-check on facts loaded after it decides it: a state
        written in the same transaction as a revocation must not travel before `end revoked`.
        A granted subscription is the host's to revoke: never held here.
        """
        if not sub.held and not sub.granted and self.facts.current(sub.viewer.user_id) is None:
            sub.held = True
        return not sub.held

    def push_to(self, watch: Watch, sub: Subscription, rendered: Rendered | None) -> None:
        if rendered is None or not self.cleared(sub):
            return
        digest, frame = rendered
        if digest == sub.last_hash:
            return  # only changes travel
        sub.last_hash = digest
        if sub.viewer.outbox.put_state(watch.name, frame):
            self.stats.states_replaced += 1
        self.stats.states_pushed[watch.channel.kind] += 1

    def push_all(self, watch: Watch) -> None:
        # A run or a card is one frame for everyone: looked up once, not once per viewer.
        wall = watch.channel.kind is Kind.WALL
        shared = None if wall else self.frame_for(watch, None)
        for viewer, sub in watch.subs.items():
            if sub.accepted and not sub.paused:
                self.push_to(watch, sub, self.frame_for(watch, viewer.user_id) if wall else shared)

    def finish(self, watch: Watch) -> None:
        """A terminal state: the final state to every viewer (paused ones too), then `end`.

        A held viewer stays until a re-check decides it (see `Engine._recheck_all`).
        """
        for viewer, sub in list(watch.subs.items()):
            if sub.accepted and self.cleared(sub):
                self.push_to(watch, sub, self.frame_for(watch, viewer.user_id))
                self.end(watch, viewer, "terminal")

    def end(self, watch: Watch, viewer: Viewer, reason: protocol.EndReason) -> None:
        viewer.outbox.put(protocol.end_frame(watch.name, reason))
        self.stats.ends[reason] += 1
        self.remove(watch, viewer)
        viewer.subscription_closed(watch.name, ended=True)

    def refuse(self, watch: Watch, sub: Subscription, code: Decision) -> None:
        assert code != "allowed"
        message = "no such channel" if code == "not_found" else "not allowed to watch this"
        sub.viewer.outbox.put(protocol.error_frame(watch.name, code, message))
        self.stats.errors[code] += 1
        self.remove(watch, sub.viewer)
        sub.viewer.subscription_closed(watch.name, ended=False)
