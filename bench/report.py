"""bench/results/results.json -> results.md (the table) and PNG plots.

Run alone to redraw from the last results: python -m bench.report
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

MODE_NAMES = {
    "ticks": "push, ticks only",
    "notify": "push + notify",
    "pusher": "Pusher endpoint + notify",
    "poll": "HTTP polling",
}
COLORS = {"ticks": "tab:blue", "notify": "tab:green", "pusher": "tab:purple", "poll": "tab:red"}


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _server(workers: int) -> str:
    return "1 process" if workers == 1 else f"{workers} workers"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| viewers | runs | mode | server | DB stmt/s | server CPU (cores) | server RSS (MB) "
        "| KB/socket | p50 | p95 | p99 | states pushed/s | replaced/s | HTTP req/s (of offered) "
        "| client CPU (cores) | PostgreSQL CPU |\n"
        "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        if "failed" in r:
            rows.append(
                f"| {r['viewers']:,} | | {MODE_NAMES[r['mode']]} | | failed: {r['failed']} "
                "| | | | | | | | | | | |"
            )
            continue
        poll = r["mode"] == "poll"
        # /metrics could not be read (a server at its open-file limit accepts nothing more).
        blind = r.get("tick_lag_max_s") is None
        pushed = "n/a†" if blind else _f(r["states_pushed_per_s"])
        replaced = "n/a†" if blind else _f(r["states_replaced_per_s"], 2)
        req = r["http_requests_per_s"] if poll else None
        offered = r.get("http_offered_per_s") if poll else None
        rows.append(
            f"| {r['viewers']:,} | {r['runs']:,} | {MODE_NAMES[r['mode']]} "
            f"| {_server(r.get('workers', 1))} | {_f(r['db_statements_per_s'])} "
            f"| {_f(r['server_cpu'], 2)} "
            f"| {_f(r['server_rss_mb'], 0)} | {_f(r['kb_per_socket'])} "
            f"| {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} "
            f"| {'–' if poll else pushed} "
            f"| {'–' if poll else replaced} "
            f"| {_f(req)}{f' of {_f(offered)}' if offered else ''} "
            f"| {_f(r['client_cpu'], 2)} | {_f(r['postgres_cpu'], 2)} |"
        )
    notes = []
    if any(
        r.get("tick_lag_max_s") is None and r["mode"] != "poll"
        for r in results
        if "failed" not in r
    ):
        notes.append("\n† /metrics did not answer (three tries of 20 s; the harness logs why).")
    return head + "\n".join(rows) + "\n" + "".join(notes) + "\n"


def ratios(results: list[dict[str, Any]]) -> str:
    by = {(r["mode"], r["viewers"]): r for r in results if "failed" not in r}
    lines = [
        "| viewers | push mode | DB statements: polling ÷ push | server CPU: polling ÷ push "
        "| p99: polling ÷ push |",
        "|---:|---|---:|---:|---:|",
    ]
    for (mode, n), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        poll = by.get(("poll", n))
        if mode == "poll" or poll is None:
            continue

        def ratio(key: str, p: dict[str, Any] = poll, q: dict[str, Any] = r) -> str:
            a, b = p.get(key), q.get(key)
            if not a or not b:
                return "–"
            return f"{a / b:,.1f}×"

        lines.append(
            f"| {n:,} | {MODE_NAMES[mode]} | {ratio('db_statements_per_s')} "
            f"| {ratio('server_cpu')} | {ratio('p99_ms')} |"
        )
    return "\n".join(lines) + "\n"


def draw(results: list[dict[str, Any]], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots", file=sys.stderr)
        return []
    ok = [r for r in results if "failed" not in r]
    modes = [m for m in MODE_NAMES if any(r["mode"] == m for r in ok)]
    written = []

    def series(mode: str, key: str) -> tuple[list[int], list[float]]:
        rows = sorted(
            (r for r in ok if r["mode"] == mode and r.get(key) is not None),
            key=lambda r: r["viewers"],
        )
        return [r["viewers"] for r in rows], [r[key] for r in rows]

    figures = [
        (
            "db_statements.png",
            "Database statements per second",
            "statements/s",
            [("db_statements_per_s", "-o", "")],
            True,
        ),
        (
            "latency.png",
            "Commit-to-viewer latency",
            "ms",
            [("p50_ms", "--o", " p50"), ("p99_ms", "-s", " p99")],
            True,
        ),
        ("server_cpu.png", "Server CPU", "cores", [("server_cpu", "-o", "")], False),
        ("memory.png", "Server resident memory", "MB", [("server_rss_mb", "-o", "")], False),
    ]
    for name, title, ylabel, keys, logy in figures:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        for mode in modes:
            for key, style, suffix in keys:
                xs, ys = series(mode, key)
                if xs:
                    ax.plot(xs, ys, style, color=COLORS[mode], label=MODE_NAMES[mode] + suffix)
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("concurrent viewers")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(name)
    return written


def write(out: Path, *, plots: bool = True) -> None:
    data = json.loads((out / "results.json").read_text())
    results = data["results"]
    m = data["machine"]
    a = data["args"]
    images = draw(results, out) if plots else []
    text = [
        "# opspush benchmark: push against polling\n",
        f"Run {data['started'][:19]} UTC on {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}. "
        f"Server pinned to CPU {a['server_cpus'] or 'any'} (one process; `--workers` are not "
        f"pinned: `{a.get('workers', '')}`, more where one process's open-file limit could not "
        f"hold its share); clients, writer and PostgreSQL "
        f"to CPU {a['client_cpus'] or 'any'}. {a['duration']:.0f} s measured per scenario "
        f"after {a['warmup']:.0f} s warm-up; runs = viewers / {a['viewers_per_run']}; "
        f"{a['pack_share']:.0%} of viewers on review pack cards.\n",
        "Reproduce: `scripts/bench` (see `bench/README.md` for what each column means).\n",
        "## Results\n",
        table(results),
        "## Polling against push\n",
        ratios(results),
    ]
    if images:
        text.append("## Plots\n")
        text.extend(f"![{name}]({name})\n" for name in images)
    (out / "results.md").write_text("\n".join(text))
    print(f"wrote {out / 'results.md'} and {len(images)} plots")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results")
