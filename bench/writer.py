"""The writer: advances runs the way the host application does, and logs every commit.

Every active run gets its `processed` counter bumped once a second (in `--batches` groups
spread over the second), review packs get a new summary every 2 s, runs complete when their
planned end comes and a fresh run takes their slot. Each committed change is logged as
`channel seq commit_time` so that clients can compute commit-to-viewer latency for every
change, including the ones a viewer only saw superseded by a newer version.

Every statement carries WRITER_MARK so the harness can leave the writer's own statements
out of the database load it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import time

import asyncpg

from bench.common import WRITER_MARK, parse_cpus, pin, use_uvloop

BUMP = f"""
UPDATE operation_runs
SET summary_counts = jsonb_set(summary_counts, '{{processed}}',
        to_jsonb((summary_counts->>'processed')::bigint + 1)),
    updated_at = now()
WHERE id = ANY($1::bigint[]) AND status IN ('queued', 'running')
RETURNING id, (summary_counts->>'processed')::bigint AS seq {WRITER_MARK}
"""

COMPLETE = f"""
UPDATE operation_runs
SET status = 'completed', outcome = 'succeeded', completed_at = now(), updated_at = now(),
    summary_counts = jsonb_set(summary_counts, '{{processed}}',
        to_jsonb((summary_counts->>'processed')::bigint + 1))
WHERE id = ANY($1::bigint[])
RETURNING id, (summary_counts->>'processed')::bigint AS seq {WRITER_MARK}
"""

INSERT = f"""
INSERT INTO operation_runs (workspace_id, tenant_id, type, status, outcome, context,
                            summary_counts, started_at, created_at)
SELECT $1, t, 'inventory.sync', 'running', 'pending', jsonb_build_object('slot', s),
       '{{"total": 100000, "processed": 0, "succeeded": 0, "failed": 0}}'::jsonb, now(), now()
FROM unnest($2::bigint[], $3::bigint[]) AS x(s, t)
RETURNING id, (context->>'slot')::bigint AS slot {WRITER_MARK}
"""

PACKS = f"""
UPDATE review_packs
SET summary = jsonb_set(summary, '{{seq}}', to_jsonb((summary->>'seq')::bigint + 1)),
    updated_at = now()
WHERE id = ANY($1::bigint[])
RETURNING tenant_id, (summary->>'seq')::bigint AS seq {WRITER_MARK}
"""


class Writer:
    def __init__(self, pool: asyncpg.Connection, args: argparse.Namespace) -> None:
        self.pool = pool
        self.args = args
        self.log = open(args.log, "a", buffering=1 << 16)  # noqa: SIM115
        self.slots: dict[int, int] = {}  # slot -> run id
        self.ends: dict[int, float] = {}  # slot -> planned completion (epoch)
        self.tenant_of: dict[int, int] = {}
        self.packs: list[int] = []
        self.workspace_id = 0
        self.statements = 0
        self.rng = random.Random(7)

    async def load(self) -> None:
        rows = await self.pool.fetch(
            f"""SELECT id, workspace_id, tenant_id,
                   (context->>'slot')::bigint AS slot, (context->>'end')::float8 AS ends
                FROM operation_runs WHERE status IN ('queued', 'running') {WRITER_MARK}"""
        )
        for row in rows:
            self.slots[row["slot"]] = row["id"]
            self.ends[row["slot"]] = row["ends"]
            self.tenant_of[row["slot"]] = row["tenant_id"]
            self.workspace_id = row["workspace_id"]
        self.packs = [
            r["id"]
            for r in await self.pool.fetch(f"SELECT id FROM review_packs ORDER BY id {WRITER_MARK}")
        ]
        self.statements += 2
        self.write_slots()

    def write_slots(self) -> None:
        tmp = self.args.slots + ".tmp"
        with open(tmp, "w") as handle:
            json.dump({str(slot): run for slot, run in self.slots.items()}, handle)
        os.replace(tmp, self.args.slots)

    def record(self, prefix: str, rows: list[asyncpg.Record]) -> None:
        now = time.time()
        self.log.write("".join(f"{prefix}{r[0]} {r[1]} {now:.6f}\n" for r in rows))

    async def run(self) -> None:
        batches = self.args.batches
        period = 1.0 / batches
        start = time.monotonic()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * period - time.monotonic()))
            group = tick % batches
            ids = [run for slot, run in self.slots.items() if slot % batches == group]
            if ids:
                self.record("run:", await self.pool.fetch(BUMP, ids))
                self.statements += 1
            if group == 0:
                await self.complete_due()
                if tick % (2 * batches) == 0 and self.packs:
                    half = (tick // (2 * batches)) % 2
                    chosen = self.packs[half::2]
                    self.record("review-pack:", await self.pool.fetch(PACKS, chosen))
                    self.statements += 1
            self.log.flush()

    async def complete_due(self) -> None:
        now = time.time()
        due = [slot for slot, ends in self.ends.items() if ends <= now]
        if not due:
            return
        tenants = [self.tenant_of[slot] for slot in due]
        new = await self.pool.fetch(INSERT, self.workspace_id, due, tenants)
        old = [self.slots[slot] for slot in due]
        for row in new:
            slot = row["slot"]
            self.slots[slot] = row["id"]
            # Mean life of a run: 10 minutes, as seeded.
            self.ends[slot] = now + self.rng.uniform(60, 1140)
        self.write_slots()  # before the old ones end, so their viewers find the new ones
        self.record("run:", await self.pool.fetch(COMPLETE, old))
        self.statements += 2


async def main_async(args: argparse.Namespace) -> None:
    # One plain connection: a pool would add its reset statements on every release.
    connection = await asyncpg.connect(args.dsn)
    writer = Writer(connection, args)
    await writer.load()
    print("ready", flush=True)
    try:
        await writer.run()
    finally:
        writer.log.flush()
        with open(args.log + ".count", "w") as handle:  # noqa: ASYNC230  # a harness, not the server
            handle.write(str(writer.statements))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--slots", required=True)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--cpus", default="")
    args = parser.parse_args()
    pin(parse_cpus(args.cpus))
    use_uvloop()
    import signal

    loop_task: list[asyncio.Task[None]] = []

    async def runner() -> None:
        task = asyncio.create_task(main_async(args))
        loop_task.append(task)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


if __name__ == "__main__":
    main()
