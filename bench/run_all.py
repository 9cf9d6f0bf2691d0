"""Run every benchmark, each in its own subprocess, and print one table.

    .venv/bin/python -P bench/run_all.py            # full size (about 25 minutes)
    .venv/bin/python -P bench/run_all.py --quick    # smoke run (about 3 minutes)
    .venv/bin/python -P bench/run_all.py --only ingest,http --markdown

Each bench runs as `python -P bench/<name>.py [--quick] --json FILE` in a fresh process (clean
RSS, no cross-talk between benches), one after the other; its own output goes to
<out>/<name>.log (--out, default a temporary directory whose path is printed). The table has
one row per figure: value, target, and ok / MISSED / info. Figures with a baseline measured in
the same run (same process) are ratios against it; the machine facts (CPU, cores, RAM, Python,
SQLite, load average before and after) are printed above the table.

Exit code: 0 when every target is met, 1 when one is missed, 2 when a bench failed to run.
"""

from __future__ import annotations

import sys
from pathlib import Path

if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

import argparse
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import tempfile
import time

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (extra args at full size, extra args with --quick, timeout s at full size)
# neonize_dispatch: --retry-s 0 skips its offline-retry part, whose connects leave the machine.
BENCHES: dict[str, tuple[list[str], list[str], float]] = {
    "ingest": ([], ["--quick"], 1800),
    "startup": ([], ["--quick"], 1200),
    "http_api": ([], ["--quick"], 900),
    "webhooks": ([], ["--quick"], 900),
    "neonize_dispatch": (["--retry-s", "0"], ["--quick"], 600),
    "sending": ([], ["--quick"], 1500),
    "soak": ([], ["--quick"], 3600),
    "media": ([], ["--quick"], 3600),
}


# ---- machine facts ----


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_facts() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "oxyd"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in oxyd/"
    except OSError:
        commit = "?"
    import aiohttp

    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": f"{os.cpu_count()} (usable: {affinity})",
        "ram": f"{mem_kb / 2**20:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": aiohttp.__version__,
        "commit": commit,
    }


def loadavg() -> str:
    return " ".join(_read("/proc/loadavg").split()[:3]) or "?"


# ---- running ----


def run_bench(name: str, quick: bool, out_dir: Path) -> tuple[dict | None, str]:
    full, quick_args, timeout_s = BENCHES[name]
    json_path = out_dir / f"{name}.json"
    json_path.unlink(missing_ok=True)
    log_path = out_dir / f"{name}.log"
    cmd = [sys.executable, "-P", str(HERE / f"{name}.py"), *(quick_args if quick else full)]
    cmd += ["--json", str(json_path)]
    t0 = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[2:])}", flush=True)
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, check=False
            )
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {timeout_s:g} s"
    dt = time.perf_counter() - t0
    figures = json.loads(json_path.read_text()) if json_path.exists() else None
    status = f"exit {rc} in {dt:.0f} s"
    print(f"           {status}; log {log_path}", flush=True)
    return figures, status


# ---- the table ----

OK, MISSED, INFO, FAILED = "ok", "MISSED", "info", "FAILED"


def verdict(good: bool) -> str:
    return OK if good else MISSED


def rows_for(name: str, f: dict | None, status: str) -> list[tuple[str, str, str, str]]:
    if f is None:
        return [(f"{name}: bench did not finish", status, "", FAILED)]
    if name == "ingest":
        return [
            (
                "ingest: writer alone / raw sqlite3 executemany",
                f"{f['writer_ratio']:.2f} ({f['writer_rows_s']:,.0f} vs "
                f"{f['raw_rows_s']:,.0f} rows/s, {f['n']:,} rows, median of "
                f"{f['rounds']} rounds)",
                ">= 0.70",
                verdict(f["writer_ratio"] >= 0.7),
            ),
            (
                "ingest: whole path (simulator -> supervisor -> writer) / raw",
                f"{f['whole_ratio']:.2f} ({f['whole_msgs_s']:,.0f} vs "
                f"{f['whole_raw_rows_s']:,.0f} rows/s, {f['whole_n']:,} msgs)",
                ">= 0.50",
                verdict(f["whole_ratio"] >= 0.5),
            ),
            (
                f"ingest: enqueue -> commit p50 at {f['latency_rate']:,} msg/s",
                f"{f['latency_p50_ms']:.1f} ms (offered {f['latency_offered']:,.0f}/s)",
                "",
                INFO,
            ),
            (
                f"ingest: enqueue -> commit p99 at {f['latency_rate']:,} msg/s",
                f"{f['latency_p99_ms']:.1f} ms (max {f['latency_max_ms']:.1f} ms)",
                "<= 50 ms",
                verdict(f["latency_p99_ms"] <= 50),
            ),
        ]
    if name == "startup":
        n = f["tenants"]
        d0, dn, md = f["daemon0"], f["daemonN"], f["mass_drops"]
        limit = md["limit"]
        rows = [
            (
                f"cold start: daemon start -> all {n:,} persisted tenants connected",
                f"{dn['all_s']:.2f} s (HTTP up {dn['http_s']:.2f} s)",
                "<= 5 s",
                verdict(dn["all_s"] <= 5),
            ),
            (
                f"cold start: RSS per tenant above the empty daemon ({n:,} tenants)",
                f"{f['rss_per_tenant_kb']:.1f} kB ({dn['rss_kb'] / 1024:.1f} vs "
                f"{d0['rss_kb'] / 1024:.1f} MiB)",
                "<= 100 kB",
                verdict(f["rss_per_tenant_kb"] <= 100),
            ),
            (
                "cold start: SIGTERM -> exit",
                f"{dn['stop_s']:.2f} s, exit code {dn['rc']}",
                "exit 0",
                verdict(dn["rc"] == 0 and d0["rc"] == 0),
            ),
        ]
        for key, r in md.items():
            if not isinstance(r, dict):
                continue
            rows.append(
                (
                    f"reconnect storm, {n:,} tenants: {key}",
                    f"{r['s']:.2f} s to all reconnected; peak {r['peak']} in flight, "
                    f"{r['connects']:,} gated connects",
                    f"peak <= {limit}",
                    verdict(r["peak"] <= limit),
                )
            )
        if md.get("broken"):
            rows.append(("supervisor broken during the storms", md["broken"], "none", MISSED))
        return rows
    if name == "http_api":
        n, c = f["tenants"], f["clients"]
        rows = [
            (
                f"HTTP: GET /v1/tenants ({n:,} tenants, {c} clients) p99",
                f"{f['tenants_p99_ms']:.1f} ms (p50 {f['tenants_p50_ms']:.1f} ms, "
                f"{f['tenants_rps']:,.0f} req/s)",
                "<= 25 ms",
                verdict(f["tenants_p99_ms"] <= 25),
            ),
            (
                f"HTTP: GET /healthz ({c} clients)",
                f"{f['healthz_rps']:,.0f} req/s (p99 {f['healthz_p99_ms']:.1f} ms)",
                ">= 3,000/s",
                verdict(f["healthz_rps"] >= 3000),
            ),
        ]
        if "bare_rps" in f:
            rows.append(
                (
                    "HTTP: /healthz vs a bare aiohttp app, same load",
                    f"{f['healthz_rps'] / f['bare_rps']:.2f} ({f['bare_rps']:,.0f} req/s bare)",
                    "",
                    INFO,
                )
            )
        return rows
    if name == "webhooks":
        rows = [
            (
                f"webhooks: deliveries/s to a local receiver ({f['events']:,} events, "
                f"{f['destinations']} destinations)",
                f"{f['deliveries_s']:,.0f}/s",
                ">= 2,000/s",
                verdict(f["deliveries_s"] >= 2000),
            ),
            (
                f"webhooks: commit -> delivery at {f['latency_rate']:,}/s",
                f"p50 {f['latency_p50_ms']:.1f} ms, p99 {f['latency_p99_ms']:.1f} ms",
                "",
                INFO,
            ),
        ]
        if "raw_posts_s" in f:
            rows.insert(
                1,
                (
                    "webhooks: dispatcher / plain aiohttp POSTs, same receiver",
                    f"{f['deliveries_s'] / f['raw_posts_s']:.2f} "
                    f"({f['raw_posts_s']:,.0f} POSTs/s plain)",
                    "",
                    INFO,
                ),
            )
        return rows
    if name == "media":
        return [
            (
                f"media: download pipeline / plain aiohttp client ({f['files']:,} files,"
                f" 50 KB-5 MB, {f['bytes'] / 1e9:.1f} GB)",
                f"{f['ratio']:.2f} ({f['pipeline_files_per_s']:,.0f} vs"
                f" {f['baseline_files_per_s']:,.0f} files/s, {f['pipeline_mb_per_s']:,.0f} vs"
                f" {f['baseline_mb_per_s']:,.0f} MB/s); without fsync {f['ratio_nofsync']:.2f}",
                ">= 0.80",
                verdict(f["ratio"] >= 0.8),
            ),
            (
                f"media: RSS while {f['big_files']} x {f['big_mb']} MB files stream",
                f"+{f['rss_increase_mb']:.1f} MB (peak {f['rss_peak_mb']:.0f} MB)",
                "< 20 MB",
                verdict(f["rss_increase_mb"] < 20),
            ),
        ]
    if name == "sending":
        return [
            (
                f"sending: enqueue p99 at {f['offered_rate_s']:.0f} req/s ({f['sends']:,} sends)",
                f"{f['enqueue_p99_ms']:.1f} ms (p50 {f['enqueue_p50_ms']:.1f} ms, daemon CPU"
                f" {f['cpu_ms_per_enqueue']:.2f} ms per request)",
                "<= 20 ms",
                verdict(f["enqueue_p99_ms"] <= 20),
            ),
            (
                f"sending: drain of {f['tenants']} tenants / writer's raw insert rate",
                f"{f['sends_vs_writer']:.2f} ({f['sends_per_s']:,.0f} sends/s vs"
                f" {f['writer_rows_s']:,.0f} rows/s; CPU {f['cpu_ms_per_send']:.2f} ms per send)",
                "",
                INFO,
            ),
        ]
    if name == "neonize_dispatch":
        return [
            (
                "neonize: event dispatch (foreign thread -> handler -> sink)",
                f"{f['events_s']:,.0f} events/s, in order: {f['in_order']}",
                "",
                INFO,
            )
        ]
    if name == "soak":
        return [
            (
                f"soak {f['minutes']:g} min ({f['tenants']} tenants, {f['offered_msgs_s']:.0f} "
                f"msg/s, {f['disconnects']} disconnects, {f['restarts']} restarts): RSS slope",
                f"{f['rss_kb_slope_per_min']:+.1f} KB/min (RSS {f['rss_kb_warm'] / 1024:.1f} -> "
                f"{f['rss_kb_last'] / 1024:.1f} MiB after warm-up)",
                f"abs(slope) <= {f['rss_limit_kb_per_min']:.0f} KB/min (1% per 10 min)",
                verdict(f["rss_flat"]),
            ),
            (
                "soak: open fds slope",
                f"{f['fds_slope_per_min']:+.2f}/min ({f['fds_warm']} -> {f['fds_last']} after "
                f"warm-up, max {f['fds_max']})",
                f"abs(slope) <= {f['fds_limit_per_min']:.2f}/min",
                verdict(f["fds_flat"]),
            ),
            (
                "soak: end state",
                f"{f['connected_at_end']}/{f['tenants']} connected, /readyz "
                f"{f['readyz_at_end']}, exit {f['exit_code']}, {f['errors']} request errors, "
                f"{f['deliveries']:,} webhooks delivered",
                "all connected, exit 0",
                verdict(
                    f["connected_at_end"] == f["tenants"]
                    and f["exit_code"] == 0
                    and f["errors"] == 0
                ),
            ),
        ]
    return [(name, json.dumps(f)[:80], "", INFO)]


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "value", "target", "result")
    allr = [head, *rows]
    w = [max(len(r[i]) for r in allr) for i in range(4)]
    line = lambda r: "| " + " | ".join(f"{c:<{w[i]}}" for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join(
        [line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run of every bench")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {list(BENCHES)}")
    ap.add_argument("--out", default=None, help="directory for logs and JSON (default: temp)")
    ap.add_argument("--json", default=None, help="also write facts and figures to this file")
    args = ap.parse_args()
    names = list(BENCHES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHES]
        if unknown:
            ap.error(f"unknown bench(es) {unknown}; choose from {list(BENCHES)}")
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="oxyd-bench-all-"))
    out_dir.mkdir(parents=True, exist_ok=True)

    facts = machine_facts()
    facts["load_before"] = loadavg()
    facts["command"] = "python -P bench/run_all.py" + (" --quick" if args.quick else "")
    print(f"logs and JSON in {out_dir}", flush=True)
    t0 = time.perf_counter()
    results: dict[str, dict | None] = {}
    rows: list[tuple[str, str, str, str]] = []
    for name in names:
        figures, status = run_bench(name, args.quick, out_dir)
        results[name] = figures
        rows += rows_for(name, figures, status)
    facts["load_after"] = loadavg()
    facts["wall_time"] = f"{(time.perf_counter() - t0) / 60:.1f} min"

    print()
    print(
        "oxyd benchmarks"
        + (" (--quick: smoke sizes, targets are for the full run)" if args.quick else "")
    )
    for k, v in facts.items():
        print(f"  {k + ':':<12} {v}")
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"facts": facts, "rows": rows, "results": results}, indent=1)
        )
    verdicts = {r[3] for r in rows}
    if FAILED in verdicts:
        return 2
    return 1 if MISSED in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
