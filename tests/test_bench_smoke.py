"""The benchmark's own arithmetic, at a trivial scale: the latency join and the report."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report
from bench.client import Segment, Stats, latencies


def test_every_committed_change_gives_one_sample_at_its_first_arrival(tmp_path: Path) -> None:
    writes = tmp_path / "writes.log"
    # run:1 changed at t=10.0 (seq 1), 11.0 (seq 2), 12.0 (seq 3), 19.0 (seq 4, after t1).
    writes.write_text("run:1 1 10.0\nrun:1 2 11.0\nrun:1 3 12.0\nrun:1 4 19.0\nrun:2 1 10.0\n")
    stats = Stats()
    seg = Segment("run:1")
    seg.seqs = [0, 2, 3]  # subscribed at seq 0; then saw 2 (covers 1 and 2), then 3
    seg.arrivals = [9.0, 11.5, 12.25]
    stats.segments.append(seg)
    samples, missed = latencies(stats, str(writes), 9.5, 18.0)
    assert sorted(round(s, 3) for s in samples) == [0.25, 0.5, 1.5]
    assert missed == 0


def test_the_report_renders_a_table_and_ratios(tmp_path: Path) -> None:
    row = {
        "viewers": 100,
        "runs": 10,
        "seconds": 10.0,
        "db_statements_per_s": 2.0,
        "server_cpu": 0.01,
        "server_rss_mb": 40.0,
        "kb_per_socket": 30.0,
        "p50_ms": 50.0,
        "p95_ms": 90.0,
        "p99_ms": 99.0,
        "states_pushed_per_s": 10.0,
        "states_replaced_per_s": 0.0,
        "http_requests_per_s": 12.5,
        "client_cpu": 0.01,
        "postgres_cpu": 0.01,
        "machine_cpu": 0.1,
    }
    results = [dict(row, mode="ticks"), dict(row, mode="poll", db_statements_per_s=30.0)]
    data = {
        "machine": {"cpu": "test", "cores": 2, "memory_gib": 1, "kernel": "x", "python": "3"},
        "args": {
            "server_cpus": "0",
            "client_cpus": "1",
            "duration": 10,
            "warmup": 1,
            "viewers_per_run": 10,
            "pack_share": 0.05,
        },
        "started": "2024-01-01T00:00:00",
        "results": results,
    }
    (tmp_path / "results.json").write_text(json.dumps(data))
    report.write(tmp_path, plots=False)
    text = (tmp_path / "results.md").read_text()
    assert "| 100 | 10 | push, ticks only | 1 process | 2.0 |" in text
    assert "15.0×" in text  # polling: 30 statements/s against push's 2


async def test_the_attacker_reconnects_when_closed_and_reports_the_close() -> None:
    """bench.attack_client against a stand-in server that closes with 1008 after 64 KB."""
    import argparse
    import asyncio

    from bench import attack_client

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            received = 0
            while received < 65536 and (data := await reader.read(65536)):
                received += len(data)
            writer.write(b"\x88\x02\x03\xf0")  # close 1008
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = argparse.Namespace(attack="cont-flood-ws", port=port, seconds=0.3, token="", key="")
    try:
        result = await attack_client.run(args)
    finally:
        server.close()
    assert result["closed_at"] is not None and result["closed_at"] < 0.3
    assert result["connections"] > 1  # it came back until its time was up
    assert sum(result["closes"].values()) >= result["connections"] - 1


def test_the_witness_waits_and_the_attack_table() -> None:
    from bench import attacks

    # States at 0, 0.25, 0.5, then a stall until 3.0; the attack runs from 0.4 to 3.25.
    gaps = attacks.gaps_in([0.0, 0.25, 0.5, 3.0, 3.25], 0.4, 3.25)
    assert [round(g, 2) for g in gaps] == [0.25, 2.5, 0.25, 0.0]
    row = {
        "attack": "cont-flood-ws",
        "seconds": 2.85,
        "max_gap": max(gaps),
        "p99_gap": attacks.p99(gaps),
        "updates": 2,
        "expected_updates": 11,
        "back_after": 0.1,
        "probes": 3,
        "probe_failures": {"timeout": 2},
        "rss_before_mb": 50.0,
        "rss_peak_mb": 80.0,
        "rss_after_mb": 70.0,
        "cpu_seconds": 2.5,
        "window_seconds": 2.9,
        "server_died_at": None,
        "error_lines": 0,
        "log_bytes": 2048,
        "attacker": {"closed_at": 0.5, "close": "close 1008", "connections": 3, "closes": {"x": 3}},
    }
    text = attacks.table([row])
    assert "| cont-flood-ws | 2.50 s | 2.50 s | 2 of 11 | 0.10 s | 2 of 3 |" in text
    assert "at 0.50 s: close 1008 (3 connections, 3 closed)" in text
