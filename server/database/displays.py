"""Wall displays' storage (sql/004_displays.sql): pairings, displays, wrong-code counts.

Time is the database's (`now()`), the same for every process. Writes run in a transaction
that says READ WRITE, since attach mode's serving connections default to read-only (these
tables are the only ones the serving role may write, README: attach grants). A revocation
notifies every process on `CHANNEL` in the same transaction, so its sockets close at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import asyncpg

from ..core import displays as rules

CHANNEL: Final = "opspush_displays"  # NOTIFY payload: the revoked display's id

Db = asyncpg.Pool


@dataclass(frozen=True)
class DisplayRow:
    id: int
    name: str
    workspace_id: int
    approver_id: int
    created_at: datetime
    last_seen_at: datetime | None
    last_address: str | None
    user_agent: str | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: asyncpg.Record) -> DisplayRow:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def rule(self) -> rules.Display:
        return rules.Display(
            self.id, self.workspace_id, self.approver_id, self.revoked_at is not None
        )

    def as_json(self) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "name": self.name,
            "workspace_id": self.workspace_id,
            "approver_id": self.approver_id,
            "created_at": iso(self.created_at),
            "last_seen_at": iso(self.last_seen_at),
            "last_address": self.last_address,
            "user_agent": self.user_agent,
            "revoked_at": iso(self.revoked_at),
        }


_COLUMNS = (
    "id, name, workspace_id, approver_id, created_at, last_seen_at, last_address, user_agent, "
    "revoked_at"
)


@contextlib.asynccontextmanager
async def _writing(pool: Db) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SET TRANSACTION READ WRITE")
        yield connection


@dataclass(frozen=True)
class NewPairing:
    user_code: str  # normalized; shown as rules.format_code
    device_code: str  # the page's secret for polling
    expires_in: float


async def create_pairing(
    pool: Db,
    address: str,
    user_agent: str,
    *,
    ttl: float,
    rate: int,
    max_pending: int = rules.MAX_PENDING_PER_ADDRESS,
) -> NewPairing | rules.PairingRefusal:
    """A new code for a page at `address`, or why not (the address's limits)."""
    async with _writing(pool) as db:
        # One address's requests in turn, so that two at once cannot both pass the limit.
        await db.execute(
            "SELECT pg_advisory_xact_lock(hashtext('opspush-pairing:' || $1))", address
        )
        await db.execute("DELETE FROM display_pairings WHERE created_at < now() - interval '1 day'")
        row = await db.fetchrow(
            """SELECT count(*) FILTER (WHERE created_at > now() - make_interval(secs => $2))
                        AS recent,
                      count(*) FILTER (WHERE expires_at > now() AND display_id IS NULL
                                       AND used_at IS NULL) AS pending
               FROM display_pairings WHERE address = $1""",
            address,
            rules.PAIRING_WINDOW,
        )
        assert row is not None
        refusal = rules.pairing_refusal(
            row["recent"], row["pending"], rate=rate, max_pending=max_pending
        )
        if refusal is not None:
            return refusal
        for _ in range(5):  # a collision with a live code is unlikely; try another
            code, device = rules.new_user_code(), rules.new_secret()
            inserted = await db.fetchval(
                """INSERT INTO display_pairings
                       (user_code_hash, device_code_hash, address, user_agent, expires_at)
                   VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
                   ON CONFLICT DO NOTHING RETURNING id""",
                rules.digest(code),
                rules.digest(device),
                address,
                user_agent[:300],
                ttl,
            )
            if inserted is not None:
                return NewPairing(code, device, ttl)
        raise RuntimeError("could not draw a free pairing code")


@dataclass(frozen=True)
class Polled:
    state: rules.PairingState
    credential: str | None = None
    display: DisplayRow | None = None


async def poll_pairing(pool: Db, device_code: str) -> Polled:
    """The pairing's state for the page holding `device_code`; once approved, the display's
    credential, made now and handed out this once (only its hash is kept)."""
    async with _writing(pool) as db:
        row = await db.fetchrow(
            """SELECT id, expires_at, display_id, used_at IS NOT NULL AS used, now() AS now
               FROM display_pairings WHERE device_code_hash = $1 FOR UPDATE""",
            rules.digest(device_code),
        )
        pairing = (
            None
            if row is None
            else rules.Pairing(row["expires_at"], row["display_id"], row["used"])
        )
        state = rules.pairing_state(pairing, row["now"] if row is not None else datetime.max)
        if state != "approved":
            return Polled(state)
        assert row is not None
        await db.execute("UPDATE display_pairings SET used_at = now() WHERE id = $1", row["id"])
        credential = rules.new_credential()
        display = await db.fetchrow(
            f"""UPDATE displays SET credential_hash = $2
                WHERE id = $1 AND credential_hash IS NULL AND revoked_at IS NULL
                RETURNING {_COLUMNS}""",
            row["display_id"],
            rules.digest(credential),
        )
        if display is None:  # revoked before the page came for it
            return Polled("expired")
        return Polled("approved", credential, DisplayRow.of(display))


async def approval_failures(pool: Db, approver_id: int) -> int:
    value: int = await pool.fetchval(
        """SELECT count(*) FROM display_approval_failures
           WHERE approver_id = $1 AND at > now() - make_interval(secs => $2)""",
        approver_id,
        rules.APPROVAL_WINDOW,
    )
    return value


async def approve(
    pool: Db, code: str, *, workspace_id: int, approver_id: int, name: str
) -> DisplayRow | None:
    """Approve the live, unused pairing with this (normalized) code for a new display; None
    when there is none (unknown, expired, used: one answer), counted against the approver."""
    async with _writing(pool) as db:
        pairing = await db.fetchrow(
            """SELECT id, address, user_agent FROM display_pairings
               WHERE user_code_hash = $1 AND expires_at > now()
                 AND display_id IS NULL AND used_at IS NULL
               FOR UPDATE""",
            rules.digest(code),
        )
        if pairing is None:
            await db.execute(
                "DELETE FROM display_approval_failures WHERE at < now() - interval '1 day'"
            )
            await db.execute(
                "INSERT INTO display_approval_failures (approver_id) VALUES ($1)", approver_id
            )
            return None
        display = await db.fetchrow(
            f"""INSERT INTO displays (name, workspace_id, approver_id, last_address, user_agent)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            name,
            workspace_id,
            approver_id,
            pairing["address"],
            pairing["user_agent"],
        )
        assert display is not None
        await db.execute(
            "UPDATE display_pairings SET display_id = $2 WHERE id = $1",
            pairing["id"],
            display["id"],
        )
        return DisplayRow.of(display)


async def workspace_exists(pool: Db, workspace_id: int) -> bool:
    found: bool = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)", workspace_id
    )
    return found


async def by_credential(pool: Db, credential: str) -> DisplayRow | None:
    row = await pool.fetchrow(
        f"SELECT {_COLUMNS} FROM displays WHERE credential_hash = $1", rules.digest(credential)
    )
    return None if row is None else DisplayRow.of(row)


async def get(pool: Db, display_id: int) -> DisplayRow | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM displays WHERE id = $1", display_id)
    return None if row is None else DisplayRow.of(row)


async def is_active(pool: Db, display_id: int) -> bool:
    found: bool = await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM displays WHERE id = $1 AND revoked_at IS NULL)", display_id
    )
    return found


async def seen(pool: Db, display_id: int, address: str, user_agent: str) -> None:
    async with _writing(pool) as db:
        await db.execute(
            """UPDATE displays SET last_seen_at = now(), last_address = $2, user_agent = $3
               WHERE id = $1""",
            display_id,
            address,
            user_agent[:300],
        )


async def listed(pool: Db, workspace_id: int | None = None) -> list[DisplayRow]:
    """The displays not revoked, of one workspace or all, oldest first."""
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM displays
            WHERE revoked_at IS NULL AND ($1::bigint IS NULL OR workspace_id = $1)
            ORDER BY id""",
        workspace_id,
    )
    return [DisplayRow.of(row) for row in rows]


async def revoke(pool: Db, display_id: int) -> bool:
    """Revoke a display (False: no such display, or revoked already) and tell every process,
    in the same transaction: its credential fails from the commit on, its sockets close."""
    async with _writing(pool) as db:
        done = await db.fetchval(
            """UPDATE displays SET revoked_at = now(), credential_hash = NULL
               WHERE id = $1 AND revoked_at IS NULL RETURNING id""",
            display_id,
        )
        if done is None:
            return False
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, str(display_id))
        return True


# -- the decisions, on what is stored ---------------------------------------------------------

ApprovalRefusal = Literal["not_found", "forbidden", "rate_limited", "invalid_code", "bad_request"]


async def approve_as(
    pool: Db, approver_id: int, code_text: object, workspace_id: object, name_text: object
) -> DisplayRow | ApprovalRefusal:
    """The whole approval, for HTTP and the CLI alike: the display made, or the refusal
    (`bad_request`, `not_found`/`forbidden` as a subscription to the wall would get,
    `rate_limited` after too many wrong codes, `invalid_code` for any code not approvable)."""
    from ..core.channels import valid_id
    from .storage import Storage

    name = rules.valid_name(name_text)
    if (
        not isinstance(workspace_id, int)
        or isinstance(workspace_id, bool)
        or not valid_id(workspace_id)
        or name is None
        or not isinstance(code_text, str)
    ):
        return "bad_request"
    snapshot = await Storage(pool).read_access([approver_id])
    decision = rules.approver_decision(
        snapshot.users[approver_id],
        snapshot.capabilities,
        workspace_id,
        await workspace_exists(pool, workspace_id),
    )
    if decision != "allowed":
        return decision
    if rules.approvals_blocked(await approval_failures(pool, approver_id)):
        return "rate_limited"
    code = rules.normalize_code(code_text)
    display = None
    if code is not None:
        display = await approve(
            pool, code, workspace_id=workspace_id, approver_id=approver_id, name=name
        )
    else:
        async with _writing(pool) as db:
            await db.execute(
                "INSERT INTO display_approval_failures (approver_id) VALUES ($1)", approver_id
            )
    return "invalid_code" if display is None else display


async def exchange(pool: Db, credential: object) -> DisplayRow | None:
    """The display a credential names, if it may still watch its wall; None otherwise. A
    display whose approver lost the right is revoked here (its page pairs again)."""
    from .storage import Storage

    if not rules.plausible_secret(credential):
        return None
    assert isinstance(credential, str)
    display = await by_credential(pool, credential)
    if display is None:
        return None
    snapshot = await Storage(pool).read_access([display.approver_id])
    decision = rules.decide_display(
        display.rule(),
        snapshot.users[display.approver_id],
        snapshot.capabilities,
        await workspace_exists(pool, display.workspace_id),
    )
    if decision == "revoked" and display.revoked_at is None:
        await revoke(pool, display.id)
    return display if decision == "allowed" else None
