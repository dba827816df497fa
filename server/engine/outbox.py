"""A viewer's bounded queue of frames waiting to be sent.

The engine never waits for a socket: it drops frames into the outbox and moves on. States
are coalesced per channel (a newer state replaces an older one still waiting, keeping its
place in line), so a slow viewer costs at most one pending state per subscription; other
frames (errors, ends) are few and bounded, and overflowing them marks the viewer as unable
to keep up.

Whoever sends calls `pop` until it gives None; `wake` tells it that there is something to
send (a connection writes at once, inside the call, while its transport takes writes);
`direct` skips the queue when nothing waits in it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Final

_CLOSE: Final = "close"


class Outbox:
    __slots__ = (
        "_close_code",
        "_control",
        "_direct",
        "_items",
        "_limit",
        "_seq",
        "_wake",
        "overflowed",
    )

    def __init__(
        self,
        control_limit: int,
        wake: Callable[[], None] = lambda: None,
        direct: Callable[[str], bool] | None = None,
    ) -> None:
        self._items: OrderedDict[tuple[str, object], str] = OrderedDict()
        self._control = 0  # non-state frames waiting
        self._limit = control_limit
        self._seq = 0
        self._close_code: int | None = None
        self.overflowed = False
        self._wake = wake
        # Sends a frame at once when nothing waits before it; False when the socket can't.
        self._direct = direct

    def __len__(self) -> int:
        return len(self._items)

    def put_state(self, ch: str, frame: str) -> bool:
        """Queue a state; returns True when it replaced an older one that was never sent."""
        if not self._items and self._direct is not None and self._direct(frame):
            return False  # the common case: straight to a socket that keeps up
        key = ("state", ch)
        replaced = key in self._items
        self._items[key] = frame
        self._wake()
        return replaced

    def put(self, frame: str) -> None:
        if not self._items and self._direct is not None and self._direct(frame):
            return  # nothing waits before it: in order, and nothing to count
        if self._control >= self._limit:
            self.overflowed = True
            self._wake()
            return
        self._seq += 1
        self._control += 1
        self._items[("frame", self._seq)] = frame
        self._wake()

    def close_after_flush(self, code: int) -> None:
        """Close the socket once everything queued so far is sent."""
        self._close_code = code
        self._wake()

    def cancel_close(self) -> None:
        self._close_code = None

    def pop(self) -> str | int | None:
        """The next frame, or the close code once drained, or None when there is nothing."""
        if self._items:
            key, frame = self._items.popitem(last=False)
            if key[0] == "frame":
                self._control -= 1
            return frame
        return self._close_code
