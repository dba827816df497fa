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
