"""The Pusher Channels protocol (version 7) as docs/pusher.md has it: names, signatures, frames.

Pure: strings in, strings or a PusherError out. The socket endpoint (web/websocket.py) and
the HTTP API (api.py) are thin loops around this module.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Final

from ..core import protocol
from ..core.channels import MAX_ID, Channel, Kind, canonical_id

# `pusher:error` codes (Pusher's published list) and the close codes that go with them.
APP_NOT_FOUND: Final = 4001
BAD_VERSION_FORMAT: Final = 4006
OLD_PROTOCOL: Final = 4007
NO_PROTOCOL: Final = 4008
UNAUTHORIZED: Final = 4009
OVER_CAPACITY: Final = 4100  # "reconnect with backoff": too many sockets or messages
PONG_NOT_RECEIVED: Final = 4201
CLIENT_EVENT_REJECTED: Final = 4301

MIN_PROTOCOL: Final = 7
MAX_CHANNEL_NAME: Final = 200  # Pusher's limits
MAX_EVENT_NAME: Final = 200
MAX_EVENT_CHANNELS: Final = 100
MAX_BATCH: Final = 10
MAX_DATA_BYTES: Final = 10 * 1024
TIMESTAMP_WINDOW: Final = 600  # seconds an HTTP API request's auth_timestamp may be off

PRIVATE: Final = "private-"
PRESENCE: Final = "presence-"
USER_CHANNEL: Final = "#server-to-user-"
OWN: Final = "opspush."  # opspush's own channels, after any prefix

_CHANNEL_RE = re.compile(r"[A-Za-z0-9_\-=@,.;]+")
_SOCKET_ID_RE = re.compile(r"[0-9]{1,20}\.[0-9]{1,20}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")  # an HMAC-SHA256 as Pusher's libraries write it
_HEX32_RE = re.compile(r"[0-9a-f]{32}")  # an MD5
_OWN_KINDS = {"run": Kind.RUN, "review-pack": Kind.REVIEW_PACK, "operations": Kind.WALL}


class PusherError(ValueError):
    """A refusal: `status` is the HTTP status (or a subscription_error's status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- channel names ---------------------------------------------------------------------------


def valid_channel_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_CHANNEL_NAME
        and bool(_CHANNEL_RE.fullmatch(name))
    )


def user_channel(name: object) -> int | None:
    """`#server-to-user-7` → 7 (Pusher's `send_to_user`); None for any other name.

    Only the canonical spelling of an id opspush can sign in (a positive integer): another
    spelling (`007`) names a channel no socket can join.
    """
    if not isinstance(name, str) or not name.startswith(USER_CHANNEL):
        return None
    text = name[len(USER_CHANNEL) :]
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_ID)):
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID and str(number) == text else None


def is_own(name: str) -> bool:
    """Named like one of opspush's channels, whatever the prefix: never the host's to use."""
    for prefix in (PRIVATE, PRESENCE, ""):
        if name.startswith(prefix) and name[len(prefix) :].startswith(OWN):
            return True
    return False


def own_channel(name: str) -> Channel | None:
    """`private-opspush.run.42` → `run:42`; None when it names no channel opspush serves."""
    if not name.startswith(PRIVATE + OWN):
        return None
    kind_name, _, id_text = name[len(PRIVATE + OWN) :].partition(".")
    kind = _OWN_KINDS.get(kind_name)
    number = canonical_id(id_text)  # `run.01` is no channel: its events would say `run.1`
    if kind is None or number is None:
        return None
    return Channel(kind, number)


def pusher_name(ch: str) -> str:
    """`run:42` → `private-opspush.run.42` (the engine names channels the protocol.md way)."""
    kind, _, number = ch.partition(":")
    return f"{PRIVATE}{OWN}{kind}.{number}"


def valid_socket_id(value: object) -> bool:
    return isinstance(value, str) and bool(_SOCKET_ID_RE.fullmatch(value))


# -- signatures ------------------------------------------------------------------------------


def sign(secret: str, text: str) -> str:
    return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()


def _matches(key: str, secret: str, auth: object, text: str) -> bool:
    if not isinstance(auth, str):
        return False
    given_key, _, signature = auth.partition(":")
    expected = sign(secret, text)
    # Both compared in constant time, so the key is not probed byte by byte either.
    key_ok = hmac.compare_digest(given_key.encode(), key.encode())
    return hmac.compare_digest(signature.encode(), expected.encode()) and key_ok


def channel_auth_ok(key: str, secret: str, socket_id: str, channel: str, auth: object) -> bool:
    """`<key>:<HMAC of '<socket_id>:<channel>'>`, what the host's /broadcasting/auth returns."""
    return _matches(key, secret, auth, f"{socket_id}:{channel}")


def presence_auth_ok(
    key: str, secret: str, socket_id: str, channel: str, channel_data: object, auth: object
) -> bool:
    """A presence channel's: the HMAC of '<socket_id>:<channel>:<channel_data>'."""
    if not isinstance(channel_data, str):
        return False
    return _matches(key, secret, auth, f"{socket_id}:{channel}:{channel_data}")


def client_event_refusal(name: str, subscribed: bool) -> str | None:
    """May a socket send client event on this channel? None when it may, else why not.

    Private and presence channels the socket holds; never public, encrypted or opspush's.
    """
    if is_own(name):
        return "client events are not accepted on opspush channels"
    if name.startswith(PRIVATE + "encrypted-"):
        return "client events are not accepted on encrypted channels"
    if not name.startswith((PRIVATE, PRESENCE)):
        return "client events are accepted on private and presence channels only"
    if not subscribed:
        return "not subscribed to this channel"
    return None


def user_auth_ok(key: str, secret: str, socket_id: str, user_data: str, auth: object) -> bool:
    """User authentication (`pusher:signin`): the HMAC of '<socket_id>::user::<user_data>'."""
    return _matches(key, secret, auth, f"{socket_id}::user::{user_data}")


def signed_user_id(user_data: object) -> int:
    """The console's user id from signed `user_data`; opspush's access rules need an integer."""
    if not isinstance(user_data, str):
        raise PusherError(400, "user_data must be a JSON string")
    try:
        value = json.loads(user_data)
    except (ValueError, RecursionError):
        raise PusherError(400, "user_data is not valid JSON") from None
    raw = value.get("id") if isinstance(value, dict) else None
    text = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else raw
    if not isinstance(text, str) or not text.isascii() or not text.isdigit():
        raise PusherError(400, "user_data.id must be the console's numeric user id")
    number = int(text)
    if not 0 < number <= MAX_ID:
        raise PusherError(400, "user_data.id out of range")
    return number


def api_query_refusal(
    key: str, secret: str, method: str, path: str, query: dict[str, str], now: float
) -> str | None:
    """Check an HTTP API request's query, before its body is read; None when good, else why
    not (for the log).

    The string signed is `METHOD\\npath\\nsorted query without auth_signature`; the body
    enters it only as body_md5, so the whole signature is decided here and a caller without
    the secret never gets the server to wait for a body.
    """
    if query.get("auth_key") != key:
        return "unknown auth_key"
    if query.get("auth_version", "1.0") != "1.0":
        return "unsupported auth_version"
    try:
        timestamp = int(query.get("auth_timestamp", ""))
    except ValueError:
        return "auth_timestamp missing or not an integer"
    if abs(now - timestamp) > TIMESTAMP_WINDOW:
        return "auth_timestamp more than 600 s off"
    signature = query.get("auth_signature", "")
    if not _HEX64_RE.fullmatch(signature):
        return "auth_signature missing or not 64 hex digits"
    if "body_md5" in query and not _HEX32_RE.fullmatch(query["body_md5"]):
        return "body_md5 is not 32 hex digits"
    signed = "&".join(f"{k}={v}" for k, v in sorted(query.items()) if k != "auth_signature")
    expected = sign(secret, f"{method}\n{path}\n{signed}")
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "bad auth_signature"
    return None


def api_body_refusal(query: dict[str, str], body: bytes) -> str | None:
    """Once the query is good: does the body match the body_md5 the signature covers?"""
    if body and query.get("body_md5") != hashlib.md5(body).hexdigest():
        return "body_md5 does not match the body"
    return None


def api_signature_ok(
    key: str, secret: str, method: str, path: str, query: dict[str, str], body: bytes, now: float
) -> str | None:
    """The whole check, query then body; None when good, else why not."""
    return api_query_refusal(key, secret, method, path, query, now) or api_body_refusal(query, body)


# -- the HTTP API's bodies -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """One event of the host's, as it travels to every process and to the sockets."""

    name: str
    channels: tuple[str, ...]
    data: str
    socket_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"n": self.name, "c": list(self.channels), "d": self.data, "s": self.socket_id}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Event:
        return cls(value["n"], tuple(value["c"]), value["d"], value.get("s"))


def _event(value: object, *, batch: bool) -> Event:
    """Validate one event of `events` (channels) or of `batch_events` (channel)."""
    if not isinstance(value, dict):
        raise PusherError(400, "an event must be a JSON object")
    name = value.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_EVENT_NAME:
        raise PusherError(400, "`name` must be a string of 1 to 200 characters")
    if batch:
        channels: object = [value.get("channel")]
    else:
        channels = value.get("channels", [value["channel"]] if "channel" in value else None)
    if not isinstance(channels, list) or not 0 < len(channels) <= MAX_EVENT_CHANNELS:
        raise PusherError(400, "`channels` must list 1 to 100 channels")
    for channel in channels:
        if not valid_channel_name(channel) and user_channel(channel) is None:
            raise PusherError(400, "a channel name is malformed")
    for channel in channels:
        if is_own(channel):
            raise PusherError(403, "opspush.* channels are opspush's own")
    data = value.get("data")
    if not isinstance(data, str):
        raise PusherError(400, "`data` must be a string")
    if len(data) > MAX_DATA_BYTES // 4 and len(data.encode()) > MAX_DATA_BYTES:
        raise PusherError(413, "event data is larger than 10 KB")
    socket_id = value.get("socket_id")
    if socket_id is not None and not valid_socket_id(socket_id):
        raise PusherError(400, "`socket_id` is malformed")
    return Event(name, tuple(channels), data, socket_id)


def _body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise PusherError(400, "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise PusherError(400, "the body must be a JSON object")
    return value


def parse_events(body: bytes) -> list[Event]:
    """`POST /apps/{id}/events`: one event to up to 100 channels."""
    return [_event(_body(body), batch=False)]


def parse_batch(body: bytes) -> list[Event]:
    """`POST /apps/{id}/batch_events`: up to 10 events; all valid, or none is sent."""
    batch = _body(body).get("batch")
    if not isinstance(batch, list) or not 0 < len(batch) <= MAX_BATCH:
        raise PusherError(400, "`batch` must list 1 to 10 events")
    return [_event(item, batch=True) for item in batch]


# -- frames ----------------------------------------------------------------------------------


def frame(event: str, data: object, channel: str | None = None) -> str:
    """A server frame; `data` travels as a JSON string, as the protocol wants."""
    out: dict[str, Any] = {"event": event}
    if channel is not None:
        out["channel"] = channel
    out["data"] = data if isinstance(data, str) else protocol.encode(data)
    return protocol.encode(out)


def connection_established(socket_id: str, activity_timeout: int) -> str:
    return frame(
        "pusher:connection_established",
        {"socket_id": socket_id, "activity_timeout": activity_timeout},
    )


def error(code: int | None, message: str) -> str:
    # pusher:error carries its data as an object, not a string.
    return protocol.encode({"event": "pusher:error", "data": {"code": code, "message": message}})


def subscription_succeeded(channel: str) -> str:
    return frame("pusher_internal:subscription_succeeded", "{}", channel)


def subscription_error(channel: str, status: int, message: str) -> str:
    kind = "AuthError" if status in (401, 403) else "SubscriptionError"
    return protocol.encode(
        {
            "event": "pusher:subscription_error",
            "channel": channel,
            "data": {"type": kind, "error": message, "status": status},
        }
    )


def presence_succeeded(channel: str, presence: dict[str, Any]) -> str:
    return frame("pusher_internal:subscription_succeeded", presence, channel)


def member_added(channel: str, user_id: str, info: Any) -> str:
    return frame("pusher_internal:member_added", {"user_id": user_id, "user_info": info}, channel)


def member_removed(channel: str, user_id: str) -> str:
    return frame("pusher_internal:member_removed", {"user_id": user_id}, channel)


def client_event(name: str, channel: str, data_json: str, user_id: str | None) -> str:
    """A client event as the other subscribers get it: `user_id` on presence channels."""
    out: dict[str, Any] = {"event": name, "channel": channel, "data": data_json}
    if user_id is not None:
        out["user_id"] = user_id
    return protocol.encode(out)


def host_event(event: Event, channel: str) -> str:
    return frame(event.name, event.data, channel)


_REFUSALS = {"not_found": 404, "forbidden": 403}
_STATE_PREFIX: Final = '{"type":"state","ch":'
_DATA_KEY: Final = ',"data":'
_INTERVAL_KEY: Final = ',"interval":'


def _translate_state(engine_frame: str) -> str:
    """A state frame, sliced rather than parsed: the hot path, once per channel per change,
    and a channel of a few viewers would pay a parse and an encoding of its whole data for
    each. The engine builds it as `core.protocol.state_frame` does: the channel, the data's
    JSON, then the interval last; the data's JSON is passed through as it is."""
    channel_end = engine_frame.index(_DATA_KEY, len(_STATE_PREFIX))
    ch = json.loads(engine_frame[len(_STATE_PREFIX) : channel_end])
    interval_at = engine_frame.rindex(_INTERVAL_KEY)
    data_json = engine_frame[channel_end + len(_DATA_KEY) : interval_at]
    payload = f'{{"data":{data_json}{engine_frame[interval_at:]}'  # {"data":…,"interval":…}
    return frame("opspush.state", payload, pusher_name(ch))


@functools.lru_cache(maxsize=4096)
def translate(engine_frame: str) -> str:
    """One of the engine's protocol.md frames in Pusher's words (cached: one frame, many viewers).

    `state` → `opspush.state` with `{"data", "interval"}`; `end` → `opspush.end` with
    `{"reason"}`; an `error` refusing a subscription → `pusher:subscription_error`.
    """
    if engine_frame.startswith(_STATE_PREFIX):
        return _translate_state(engine_frame)
    value = json.loads(engine_frame)
    channel = pusher_name(value["ch"])
    kind = value["type"]
    if kind == "state":
        return frame(
            "opspush.state", {"data": value["data"], "interval": value["interval"]}, channel
        )
    if kind == "end":
        return frame("opspush.end", {"reason": value["reason"]}, channel)
    status = _REFUSALS.get(value["code"], 400)
    return subscription_error(channel, status, value["message"])


# -- client frames ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientFrame:
    event: str
    data: dict[str, Any]
    channel: str | None
    raw: Any = None  # `data` as the client sent it (a client event's is relayed as it is)


def parse_client_frame(text: str) -> ClientFrame:
    """A client frame: `{"event": …, "data": {…} or "{…}", "channel"?: …}`."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise PusherError(400, "frame is not valid JSON") from None
    if not isinstance(value, dict) or not isinstance(value.get("event"), str):
        raise PusherError(400, "a frame is a JSON object with an `event` string")
    data = raw = value.get("data", {})
    if isinstance(data, str) and value["event"].startswith("client-"):
        data = {}  # a client event's data is relayed, never read
    elif isinstance(data, str):  # some clients send data as a JSON string
        try:
            data = json.loads(data) if data else {}
        except (ValueError, RecursionError):
            raise PusherError(400, "`data` is not valid JSON") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        data = {"value": data}
    channel = value.get("channel")
    return ClientFrame(value["event"], data, channel if isinstance(channel, str) else None, raw)


def echo(name: object) -> str:
    """A client's channel name, safe and bounded to send back."""
    text = name if isinstance(name, str) else ""
    return text[:MAX_CHANNEL_NAME].encode("utf-8", "replace").decode()


def encode_user(user_id: str) -> str:
    """A user id from a path, as the `user_data` that `signed_user_id` reads."""
    return protocol.encode({"id": user_id})
