"""The host's channels on this process: who listens to what, and delivery of the host's events.

Messages come from `pusher_relay` (every process gets every message, through PostgreSQL);
each process hands them to its own sockets. Delivery never waits for a socket: frames go
into the socket's outbox, which is bounded.

Presence and client events travel the same way. The hub's one task (`start`, ended by
`stop`) sends what its sockets caused, in order: presence deltas as they happen, a
snapshot of this process's members every `presence_interval` seconds, client events; and
it expires the members of processes whose snapshots stopped. Its queues are bounded: a
client event past them is refused, presence deltas past them become the next snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

import asyncpg

from ..database.relay import Reassembler
from ..tasks import cancel_and_wait
from . import presence as roster_rules
from . import protocol as pusher

log = logging.getLogger("opspush.pusher")


class Member(Protocol):
    """What the hub needs of a Pusher socket."""

    socket_id: str

    def send(self, frame: str) -> None: ...

    def terminate(self) -> None: ...


MAX_DELTAS: Final = 10_000  # presence changes waiting to be sent; past this, a snapshot
MAX_CLIENT_EVENTS: Final = 10_000  # client events waiting to be sent; past this, refused
MAX_SEND: Final = 500  # client events in one relay message
Publish = Callable[[dict[str, Any]], Awaitable[None]]


class PusherHub:
    def __init__(
        self,
        terminate_user: Callable[[int], None] | None = None,
        *,
        presence_interval: float = 5.0,
        presence_expiry: float = 30.0,
        max_presence_members: int = 100,
    ) -> None:
        # `terminate_connections` ends all of a user's sockets, `/ws` ones included: the
        # service knows them all; without it, the hub's own signed-in members.
        self.terminate_user = terminate_user
        self.channels: dict[str, set[Member]] = {}
        self.users: dict[int, set[Member]] = {}
        self.reassembler = Reassembler()
        self.delivered = 0  # frames handed to sockets (for tests and metrics)
        # Presence: this process's sockets by channel and user; the union of every process.
        self.process_id = secrets.token_hex(8)
        self.presence_interval = presence_interval
        self.max_presence_members = max_presence_members
        self.roster = roster_rules.Roster(self.process_id, presence_expiry, max_presence_members)
        self.present: dict[str, dict[str, set[Member]]] = {}  # channel -> user -> sockets
        self.presence_user: dict[tuple[Member, str], str] = {}  # (socket, channel) -> user
        self._deltas: deque[list[Any]] = deque()
        self._resnapshot = False
        self._announced = False  # the last snapshot sent had members
        self._client_events: deque[dict[str, Any]] = deque()
        self._seq = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._publish: Publish | None = None

    # -- the hub's task ------------------------------------------------------------------

    def start(self, publish: Publish) -> None:
        assert self._task is None, "hub already started"
        self._publish = publish
        self._task = asyncio.create_task(self._run(), name="opspush-pusher-hub")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if task is not None and self._publish is not None:
            # Best effort: the others drop this process's members now, not at expiry.
            with contextlib.suppress(*_DATABASE_ERRORS):
                async with asyncio.timeout(2):
                    await self._publish(self._presence_message(bye=True))

    async def _run(self) -> None:
        assert self._publish is not None
        next_snapshot = time.monotonic()
        tick = min(1.0, self.presence_interval)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            self._announce(self.roster.expire(now))
            messages: list[dict[str, Any]] = []
            if self._client_events:
                batch = [
                    self._client_events.popleft()
                    for _ in range(min(MAX_SEND, len(self._client_events)))
                ]
                messages.append({"t": "client", "events": batch})
                if self._client_events:
                    self._wake.set()
            # A process with no members, that said so last time, has nothing to repeat.
            quiet = not self.roster.mine and not self._announced
            snapshot = self._resnapshot or (now >= next_snapshot and not quiet)
            if self._deltas or snapshot:
                if snapshot:
                    next_snapshot = now + self.presence_interval
                    self._resnapshot = False
                messages.append(self._presence_message(snapshot=snapshot))
            for message in messages:
                try:
                    await self._publish(message)
                except _DATABASE_ERRORS as error:
                    log.warning("could not relay presence or client events: %s", error)
                    self._resnapshot = True  # whatever was lost, the next snapshot restores

    def _presence_message(self, *, snapshot: bool = False, bye: bool = False) -> dict[str, Any]:
        self._seq += 1
        message: dict[str, Any] = {"t": "presence", "p": self.process_id, "q": self._seq}
        if bye:
            message["bye"] = True
            return message
        deltas = list(self._deltas)
        self._deltas.clear()
        if snapshot:
            message["s"] = self.roster.mine  # the deltas so far are in it
            self._announced = bool(self.roster.mine)
        else:
            message["d"] = deltas
        return message

    def _queue_delta(self, delta: list[Any]) -> None:
        if len(self._deltas) >= MAX_DELTAS:
            self._deltas.clear()
            self._resnapshot = True
        else:
            self._deltas.append(delta)
        self._wake.set()

    # -- presence on this process --------------------------------------------------------

    def presence_full(self, channel: str, user_id: str) -> bool:
        """Would this user be one member too many (Pusher's limit counts distinct users)?"""
        if self.roster.holds(channel, user_id):
            return False
        return len(self.roster.members(channel)) >= self.max_presence_members

    def presence_join(self, member: Member, channel: str, user_id: str, info: Any) -> str:
        """Join a presence channel; the subscription_succeeded frame for this socket."""
        self.join(member, channel)
        self.presence_user[(member, channel)] = user_id
        sockets = self.present.setdefault(channel, {}).setdefault(user_id, set())
        sockets.add(member)
        changes: list[roster_rules.Change] = []
        if len(sockets) == 1:  # the user's first socket on this process
            changes = self.roster.join(self.process_id, channel, user_id, info, time.monotonic())
            self._queue_delta([channel, user_id, info])
        succeeded = pusher.presence_succeeded(
            channel, roster_rules.presence_data(self.roster.members(channel))
        )
        self._announce(changes)
        return succeeded

    def _presence_leave(self, member: Member, channel: str) -> None:
        user_id = self.presence_user.pop((member, channel), None)
        if user_id is None:
            return
        users = self.present.get(channel, {})
        sockets = users.get(user_id, set())
        sockets.discard(member)
        if sockets:
            return
        users.pop(user_id, None)
        if not users:
            self.present.pop(channel, None)
        self._queue_delta([channel, user_id, None, True])
        self._announce(self.roster.leave(self.process_id, channel, user_id, time.monotonic()))

    def user_of(self, member: Member, channel: str) -> str | None:
        return self.presence_user.get((member, channel))

    def _announce(self, changes: list[roster_rules.Change]) -> None:
        """member_added / member_removed to this process's sockets, never to the user's own."""
        for change in changes:
            users = self.present.get(change.channel)
            if not users:
                continue
            if change.added:
                frame = pusher.member_added(change.channel, change.user_id, change.info)
            else:
                frame = pusher.member_removed(change.channel, change.user_id)
            for user_id, sockets in users.items():
                if user_id != change.user_id:
                    for socket in list(sockets):
                        socket.send(frame)
                        self.delivered += 1

    # -- client events -------------------------------------------------------------------

    def client_event(
        self, member: Member, channel: str, name: str, data_json: str, user_id: str | None
    ) -> bool:
        """Queue a client event for every process; False when the queue is full."""
        if len(self._client_events) >= MAX_CLIENT_EVENTS:
            return False
        self._client_events.append(
            {"c": channel, "n": name, "d": data_json, "s": member.socket_id, "u": user_id}
        )
        self._wake.set()
        return True

    def _deliver_client(self, value: dict[str, Any]) -> None:
        channel, sender = str(value["c"]), value["s"]
        members = self.channels.get(channel)
        if not members:
            return
        user_id = value.get("u")
        frame = pusher.client_event(
            str(value["n"]), channel, str(value["d"]), None if user_id is None else str(user_id)
        )
        for member in list(members):
            if member.socket_id != sender:
                member.send(frame)
                self.delivered += 1

    def _on_presence(self, message: dict[str, Any]) -> None:
        process = str(message["p"])
        if process == self.process_id:
            return  # this process's own part is known first-hand
        now = time.monotonic()
        if message.get("bye"):
            self._announce(self.roster.forget(process))
            return
        if not self.roster.fresh(process, int(message["q"]), now):
            return
        if "s" in message:
            snapshot = message["s"]
            if not isinstance(snapshot, dict):
                raise ValueError("a presence snapshot must be an object")
            self._announce(self.roster.snapshot(process, snapshot, now))
            return
        for delta in message.get("d", []):
            channel, user_id, info = str(delta[0]), str(delta[1]), delta[2]
            if len(delta) > 3:
                self._announce(self.roster.leave(process, channel, user_id, now))
            else:
                self._announce(self.roster.join(process, channel, user_id, info, now))

    def join(self, member: Member, channel: str) -> None:
        self.channels.setdefault(channel, set()).add(member)

    def leave(self, member: Member, channel: str) -> None:
        if channel.startswith(pusher.PRESENCE):
            self._presence_leave(member, channel)
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
        if kind == "presence":
            self._on_presence(message)
        elif kind == "client":
            for value in message["events"]:
                self._deliver_client(value)
        elif kind == "events":
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


_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
