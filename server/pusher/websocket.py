"""`/app/{key}?protocol=7`: one Pusher Channels connection, seen by the engine as a Viewer.

It runs on the same frame layer as `/ws` (web/engine_socket.py): no task per socket, one
encoding per frame for all its viewers, the same outbox, backpressure, conflation, send
timeout, rate limit, Origin check and per-address, per-user and admission limits. It
differs in the words: the engine's frames are translated by `PusherOutbox`; the host's own
events come from the hub.

A connection that did not sign in has no user: the host's channel signature is the whole
authorization, so its opspush subscriptions are granted. After `pusher:signin` it has the
user's id (and takes a place in that user's connection limit), and its new subscriptions
are decided (and re-checked) on the access rules.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.http11 import Request

from ..core import protocol
from ..core.channels import Kind
from ..engine.outbox import Outbox
from ..web.engine_socket import EngineSocket
from . import presence
from . import protocol as pusher
from .hub import PusherHub
from .protocol import PusherError

if TYPE_CHECKING:
    from ..service import Service

log = logging.getLogger("opspush.pusher")

PATH_PREFIX = "/app/"  # then the app key; the query names the protocol version
HOST_EVENT_BACKLOG = 1000  # the host's events waiting for one slow socket; beyond: 4100

# A socket id must be unguessable: the host excludes a sender by it and a channel signature
# is bound to it. Two random parts keep Pusher's `<digits>.<digits>` (Laravel's and Pusher's
# server libraries check that shape); 80 random bits make a repeat on any process negligible.
_SOCKET_ID_PART = 10**12


def new_socket_id() -> str:
    first = secrets.randbelow(_SOCKET_ID_PART) + 1
    return f"{first}.{secrets.randbelow(_SOCKET_ID_PART) + 1}"


class PusherOutbox(Outbox):
    """The engine's protocol.md frames, put in Pusher's words.

    The first state of a subscription is preceded by `subscription_succeeded`; `send` is
    for frames already in Pusher's words.
    """

    __slots__ = ("confirmed",)

    def __init__(
        self,
        control_limit: int,
        wake: Callable[[], None] = lambda: None,
        direct: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(control_limit, wake, direct)
        self.confirmed: set[str] = set()  # engine channel names told subscription_succeeded

    def put_state(self, ch: str, frame: str) -> bool:
        if ch not in self.confirmed:
            self.confirmed.add(ch)
            super().put(pusher.subscription_succeeded(pusher.pusher_name(ch)))
        return super().put_state(ch, pusher.translate(frame))  # translated once per frame

    def put(self, frame: str) -> None:
        super().put(pusher.translate(frame))  # the engine's `end` and refusals

    def send(self, frame: str) -> None:
        super().put(frame)


class PusherConnection(EngineSocket):
    """One `/app/{key}` socket, from the upgrade request to the end; the engine's Viewer
    and the hub's Member."""

    def __init__(self, server_state: Any, *, service: Service) -> None:
        super().__init__(
            server_state,
            service=service,
            too_many=pusher.OVER_CAPACITY,
            outbox_type=PusherOutbox,
            extra_frames=HOST_EVENT_BACKLOG,
        )
        self.frames: PusherOutbox = self.outbox  # type: ignore[assignment]
        self.socket_id = new_socket_id()
        self.user_id: int | None = None
        self.host: set[str] = set()  # the host's channels, through the hub
        self.heard = time.monotonic()  # the client's last message (the activity timeout)
        self._established = False
        self._activity: asyncio.TimerHandle | None = None
        self._pinged = 0.0
        rate = service.settings.pusher_client_event_rate
        self.client_events = protocol.RateLimiter(rate, rate, time.monotonic())

    @property
    def hub(self) -> PusherHub:
        assert self.service.pusher_hub is not None
        return self.service.pusher_hub

    @property
    def sending(self) -> bool:
        return self._established

    # -- the Viewer protocol and the hub's Member ----------------------------------------

    def subscription_closed(self, ch: str, *, ended: bool) -> None:
        self.channels = {c for c in self.channels if c.name != ch}
        self.frames.confirmed.discard(ch)

    def send(self, frame: str) -> None:
        self.frames.send(frame)

    def terminate(self) -> None:
        self.frames.send(pusher.error(pusher.UNAUTHORIZED, "connection terminated by the host"))
        self.outbox.close_after_flush(pusher.UNAUTHORIZED)

    # -- the connection's hooks ----------------------------------------------------------

    def refuse(self, request: Request) -> tuple[int, str] | None:
        headers = request.headers
        refusal = self.service.upgrade_refusal(headers.get_all("origin"), headers.get_all("host"))
        if refusal is not None:
            return refusal
        if self.service.draining or self.settings.pusher is None:
            return 403, "Restarting"
        return None

    def opened(self, request: Request) -> None:
        """Pusher's refusals come after the handshake, as `pusher:error` and a close with
        its code: pusher-js reads the code to decide whether, and when, to come back."""
        service = self.service
        settings = self.settings
        assert settings.pusher is not None
        target = urlsplit(request.path)
        refusal: tuple[int, str] | None
        if unquote(target.path.removeprefix(PATH_PREFIX)) != settings.pusher.key:
            refusal = pusher.APP_NOT_FOUND, "unknown app key"
        else:
            versions = parse_qs(target.query).get("protocol")
            refusal = _protocol_refusal(versions[-1] if versions else None)
        if refusal is None:
            address = service.client_address(self.peer, request.headers.get_all("x-forwarded-for"))
            admitted = (
                self.hold(service.track_address(address))
                and service.admit()
                and self.hold(service.track_session(self))
            )
            if not admitted:
                refusal = pusher.OVER_CAPACITY, "too many connections; back off"
        if refusal is not None:
            self._end(*refusal)
            return
        self._established = True
        self.send_text(
            pusher.connection_established(self.socket_id, settings.pusher_activity_timeout)
        )
        self._expect_activity()

    def received(self, data: bytes, text: str | None) -> None:
        if not self._established:
            return  # refused: its close is on the way
        self.heard = time.monotonic()
        if len(data) > self.settings.max_frame_bytes:
            self.close(protocol.CLOSE_TOO_BIG)
            return
        # Every message counts, text or binary: a flood of either is the same flood.
        if not self.limiter.allow(self.heard):
            if self.limiter.exhausted:
                self.close(pusher.OVER_CAPACITY)
            else:
                self._error(pusher.CLIENT_EVENT_REJECTED, "too many messages; slow down")
            return
        if text is None:
            self._error(None, "frames must be UTF-8 JSON text")
            return
        try:
            self._handle(pusher.parse_client_frame(text))
        except PusherError as error:
            self._error(None, error.message)

    def ended(self) -> None:
        if self._activity is not None:
            self._activity.cancel()
            self._activity = None
        if self.service.pusher_hub is not None:
            self.hub.forget(self, self.host, self.user_id)
        self.host.clear()
        super().ended()

    # -- the activity timeout ------------------------------------------------------------

    def _expect_activity(self) -> None:
        """Ping a client silent for activity_timeout; close with 4201 if it stays silent."""
        quiet_until = self.heard + self.settings.pusher_activity_timeout
        delay = max(0.0, quiet_until - time.monotonic())
        self._activity = asyncio.get_running_loop().call_later(delay, self._quiet)

    def _quiet(self) -> None:
        self._activity = None
        if not self.open():
            return
        now = time.monotonic()
        if now < self.heard + self.settings.pusher_activity_timeout:
            self._expect_activity()  # heard meanwhile: wait from then
            return
        self._pinged = now
        self.frames.send(pusher.frame("pusher:ping", "{}"))
        loop = asyncio.get_running_loop()
        self._activity = loop.call_later(self.settings.pusher_pong_timeout, self._pong_due)

    def _pong_due(self) -> None:
        self._activity = None
        if self.heard >= self._pinged:
            self._expect_activity()
            return
        self.frames.send(pusher.error(pusher.PONG_NOT_RECEIVED, "pong reply not received"))
        self.outbox.close_after_flush(pusher.PONG_NOT_RECEIVED)

    def _end(self, code: int, message: str) -> None:
        """Refuse the connection: the error, then a close with its code."""
        self._established = True  # for the error frame only: nothing else is sent
        self.send_text(pusher.error(code, message))
        self._established = False
        self.close(code)

    # -- client frames -------------------------------------------------------------------

    def _handle(self, frame: pusher.ClientFrame) -> None:
        event = frame.event
        if event == "pusher:ping":
            self.frames.send(pusher.frame("pusher:pong", "{}"))
        elif event == "pusher:pong":
            pass  # being heard is all it is for
        elif event == "pusher:subscribe":
            self._subscribe(frame.data)
        elif event == "pusher:unsubscribe":
            self._unsubscribe(frame.data.get("channel"))
        elif event == "pusher:signin":
            self._signin(frame.data)
        elif event.startswith("client-"):
            self._client_event(frame)
        else:
            self._error(None, "unknown event")

    def _subscribe(self, data: dict[str, object]) -> None:
        name = data.get("channel")
        if not pusher.valid_channel_name(name) and not (
            isinstance(name, str) and name.startswith(pusher.USER_CHANNEL)
        ):
            self._refuse(pusher.echo(name), 400, "malformed channel name")
            return
        assert isinstance(name, str)
        channel = pusher.own_channel(name)
        if name in self.host or (channel is not None and channel in self.channels):
            return  # subscribing twice: the first subscription stands
        if len(self.channels) + len(self.host) >= self.service.settings.max_subscriptions:
            self._refuse(name, 429, "subscription limit reached")
            return
        if name.startswith(pusher.PRESENCE):
            if pusher.is_own(name):
                self._refuse(name, 403, "opspush channels have no presence")
                return
            self._join_presence(name, data)
            return
        if name.startswith(pusher.USER_CHANNEL):
            if self.user_id is None or name != f"{pusher.USER_CHANNEL}{self.user_id}":
                self._refuse(name, 403, "not this connection's user")
                return
            self._join_host(name)
            return
        if not name.startswith(pusher.PRIVATE):
            if pusher.is_own(name):
                self._refuse(name, 403, "opspush channels are private: use private-" + name)
                return
            self._join_host(name)  # a public channel of the host's
            return
        settings = self.service.settings
        assert settings.pusher is not None
        if not pusher.channel_auth_ok(
            settings.pusher.key, settings.pusher.secret, self.socket_id, name, data.get("auth")
        ):
            log.info("refused a channel signature (bad, missing, or for another socket)")
            self._refuse(name, 401, "invalid channel signature")
            return
        if not pusher.is_own(name):
            self._join_host(name)
            return
        if channel is None:
            self._refuse(name, 404, "no such channel")
            return
        if channel.kind is Kind.WALL and self.user_id is None:
            self._refuse(name, 403, "a wall needs a signed-in connection (pusher:signin)")
            return
        self.channels.add(channel)
        self.outbox.cancel_close()
        self.service.engine.subscribe(self, channel, granted=self.user_id is None)

    def _join_presence(self, name: str, data: dict[str, object]) -> None:
        settings = self.service.settings
        assert settings.pusher is not None
        channel_data = data.get("channel_data")
        if not pusher.presence_auth_ok(
            settings.pusher.key,
            settings.pusher.secret,
            self.socket_id,
            name,
            channel_data,
            data.get("auth"),
        ):
            log.info("refused a presence signature (bad, missing, or for another socket)")
            self._refuse(name, 401, "invalid channel signature")
            return
        try:
            user_id, info = presence.parse_channel_data(channel_data)
        except ValueError as error:
            self._refuse(name, 400, str(error))
            return
        if self.hub.presence_full(name, user_id):
            self._refuse(name, 403, "presence channel member limit reached")
            return
        self.host.add(name)
        self.frames.send(self.hub.presence_join(self, name, user_id, info))

    def _client_event(self, frame: pusher.ClientFrame) -> None:
        name = frame.channel
        if name is None:
            self._error(pusher.CLIENT_EVENT_REJECTED, "a client event needs a channel")
            return
        refusal = pusher.client_event_refusal(name, name in self.host)
        if refusal is not None:
            self._error(pusher.CLIENT_EVENT_REJECTED, refusal)
            return
        if len(frame.event) > pusher.MAX_EVENT_NAME:
            self._error(pusher.CLIENT_EVENT_REJECTED, "event name longer than 200 characters")
            return
        data_json = protocol.encode(frame.raw)
        if len(data_json.encode()) > pusher.MAX_DATA_BYTES:
            self._error(pusher.CLIENT_EVENT_REJECTED, "client event data larger than 10 KB")
            return
        if not self.client_events.allow(time.monotonic()):
            self._error(pusher.CLIENT_EVENT_REJECTED, "client event rate limit reached")
            return
        user_id = self.hub.user_of(self, name)
        if not self.hub.client_event(self, name, frame.event, data_json, user_id):
            self._error(pusher.CLIENT_EVENT_REJECTED, "too many client events; slow down")

    def _join_host(self, name: str) -> None:
        self.host.add(name)
        self.hub.join(self, name)
        self.frames.send(pusher.subscription_succeeded(name))

    def _unsubscribe(self, name: object) -> None:
        if not isinstance(name, str):
            return
        if name in self.host:
            self.host.discard(name)
            self.hub.leave(self, name)
            return
        channel = pusher.own_channel(name)
        if channel is not None and channel in self.channels:
            self.channels.discard(channel)
            self.frames.confirmed.discard(channel.name)
            self.service.engine.unsubscribe(self, channel)

    def _signin(self, data: dict[str, object]) -> None:
        settings = self.service.settings
        assert settings.pusher is not None
        if self.user_id is not None:
            self._error(None, "already signed in")
            return
        user_data = data.get("user_data")
        if not isinstance(user_data, str) or not pusher.user_auth_ok(
            settings.pusher.key, settings.pusher.secret, self.socket_id, user_data, data.get("auth")
        ):
            log.info("refused a sign-in signature")
            self.terminate()
            return
        try:
            user_id = pusher.signed_user_id(user_data)
        except PusherError as error:
            self._error(pusher.UNAUTHORIZED, error.message)
            return
        if not self.hold(self.service.track_user(user_id)):
            # OPSPUSH_MAX_CONNECTIONS_PER_USER counts this user's sockets on both endpoints.
            self.frames.send(pusher.error(pusher.OVER_CAPACITY, "too many connections"))
            self.outbox.close_after_flush(pusher.OVER_CAPACITY)
            return
        self.user_id = user_id
        self.hub.signed_in(self, user_id)
        self.frames.send(pusher.frame("pusher:signin_success", {"user_data": user_data}))

    def _refuse(self, channel: str, status: int, message: str) -> None:
        self.service.stats.errors[f"pusher_{status}"] += 1
        self.frames.send(pusher.subscription_error(channel, status, message))

    def _error(self, code: int | None, message: str) -> None:
        self.service.stats.errors["pusher_error"] += 1
        self.frames.send(pusher.error(code, message))


def _protocol_refusal(query: str | None) -> tuple[int, str] | None:
    if query is None or query == "":
        return pusher.NO_PROTOCOL, "no protocol version given"
    if not query.isascii() or not query.isdigit():
        return pusher.BAD_VERSION_FORMAT, "invalid protocol version"
    if int(query) < pusher.MIN_PROTOCOL:
        return pusher.OLD_PROTOCOL, "protocol version 7 or later is required"
    return None
