"""What the engine keeps per watched channel (`Watch`) and per viewer of it (`Subscription`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..core.access import RunScope, TenantScope
from ..core.channels import Channel
from .outbox import Outbox


class Viewer(Protocol):
    """The engine's view of one WebSocket session.

    `user_id` is None for a connection with no user of its own (a Pusher socket that did not
    sign in): every subscription it makes must be granted by the host (see `Engine.subscribe`).
    """

    outbox: Outbox

    @property
    def user_id(self) -> int | None: ...

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        """The engine dropped this subscription: after an `end` frame, or a refusal."""


@dataclass(eq=False, slots=True)
class Subscription:
    viewer: Viewer
    paused: bool = False
    accepted: bool = False  # access granted and the first state handed over
    last_hash: bytes | None = None
    # Authorized by the host (a token's `channels` claim, a Pusher channel signature) rather
    # than by the access tables: existence, terminal state and `gone` still come from reads.
    granted: bool = False
    arrived: float = 0.0  # monotonic: its facts may be at most NEW_FACTS_AGE older
    after_read: int = 0  # the engine's read count when it arrived: a refusal needs a later read
    # Its user's facts are not current (an access change was notified, or its channel's
    # scope moved meanwhile): nothing is pushed to it until a re-check decides it.
    held: bool = False


@dataclass(eq=False)
class Watch:
    channel: Channel
    name: str
    subs: dict[Viewer, Subscription] = field(default_factory=dict)
    active: int = 0  # subscriptions not paused
    next_due: float | None = None  # monotonic; None until first read
    read_at: float | None = None
    read_seq: int = 0  # which read (the engine's count) the latest state came from
    issued_seq: int = 0  # the latest read of it issued, landed or not
    stale: bool = False  # a change was notified while every viewer was paused
    interval: int | None = None
    final: bool = False
    existed: bool = False  # seen in the database at least once
    # The latest read. A run or a card is the same for everyone; a wall is filtered per user.
    scope: RunScope | TenantScope | None = None
    frame: str | None = None
    digest: bytes | None = None
    wall_runs: list[tuple[RunScope, str]] = field(default_factory=list)
    wall_frames: dict[int, tuple[bytes, str]] = field(default_factory=dict)
    retry_delay: float = 0.0
