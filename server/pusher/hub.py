"""The host's channels on this process: who listens to what, and delivery of the host's events.

Messages come from `pusher_relay` (every process gets every message, through PostgreSQL);
each process hands them to its own sockets. Delivery never waits for a socket: frames go
into the socket's outbox, which is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from ..database.relay import Reassembler
from . import protocol as pusher

log = logging.getLogger("opspush.pusher")


class Member(Protocol):
    """What the hub needs of a Pusher socket."""

    socket_id: str

    def send(self, frame: str) -> None: ...

    def terminate(self) -> None: ...


class PusherHub:
    def __init__(self, terminate_user: Callable[[int], None] | None = None) -> None:
        # `terminate_connections` ends all of a user's sockets, `/ws` ones included: the
        # service knows them all; without it, the hub's own signed-in members.
        self.terminate_user = terminate_user
        self.channels: dict[str, set[Member]] = {}
        self.users: dict[int, set[Member]] = {}
        self.reassembler = Reassembler()
        self.delivered = 0  # frames handed to sockets (for tests and metrics)

    def join(self, member: Member, channel: str) -> None:
        self.channels.setdefault(channel, set()).add(member)

    def leave(self, member: Member, channel: str) -> None:
        members = self.channels.get(channel)
        if members is not None:
            members.discard(member)
            if not members:
                del self.channels[channel]

    def signed_in(self, member: Member, user_id: int) -> None:
        self.users.setdefault(user_id, set()).add(member)

    def forget(self, member: Member, channels: set[str], user_id: int | None) -> None:
        for channel in channels:
            self.leave(member, channel)
        if user_id is not None and user_id in self.users:
            self.users[user_id].discard(member)
            if not self.users[user_id]:
                del self.users[user_id]

    # -- messages from every process -----------------------------------------------------

    def on_payload(self, payload: str) -> None:
        """A NOTIFY payload on the relay's channel (called by the listener)."""
        message = self.reassembler.feed(payload)
        if message is None:
            return
        try:
            self.deliver(message)
        except (KeyError, TypeError, ValueError) as error:
            log.warning("dropped a malformed relay message: %s", error)

    def deliver(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        if kind == "events":
            for value in message["events"]:
                self._deliver_event(pusher.Event.from_json(value))
        elif kind == "terminate":
            user_id = int(message["user"])
            if self.terminate_user is not None:
                self.terminate_user(user_id)
                return
            for member in list(self.users.get(user_id, ())):
                member.terminate()

    def _deliver_event(self, event: pusher.Event) -> None:
        for channel in event.channels:
            members = self.channels.get(channel)
            if not members:
                continue
            frame = pusher.host_event(event, channel)
            for member in list(members):
                if member.socket_id != event.socket_id:
                    member.send(frame)
                    self.delivered += 1
