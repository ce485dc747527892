"""Benchmark: the dashboard with a 10,000-trial study, in real headless Chromium.

    python benchmarks/dashboard_10k.py [--trials 10000] [--runs 3] [--keep DIR]

1. Writes an N-trial replay study (real H200 measurements) into a fresh SQLite database
   through the real storage (benchmarks/dashboard_data.py says how).
2. Starts `tuner serve` on 127.0.0.1 and times the first request for the study (the
   server reading the study into its cache: once per server process and study).
3. Opens the study page in Chromium `--runs` times with a cold browser (new context:
   empty HTTP cache) and `--runs` times warm (same context, plotly.min.js cached), and
   reads the page's own performance marks:
     first meaningful render = header, KPIs, best config and the first trial-table page
                               are on screen (what the user came for);
     first chart             = the optimization history is drawn too;
     all charts              = history, scatter and parallel coordinates drawn.
4. Fetches trial-table pages from inside the page (fetch + performance.now, so the
   browser's HTTP stack is measured): for each of several sorts/filters, the first page
   (a view nobody asked for yet: the server builds its columns and sort order) and the
   next pages (served from that view). Also clicks the table's "Next" button and times
   until the new rows are on screen.
5. Fetches more never-used sorts and filters with a plain HTTP client (httpx), printing
   every request's time: what the API itself takes, without the browser.
6. Peer, side by side on the same database and browser (`--peer-runs`, 0 skips it):
   optuna-dashboard (the pip package, its own server). Its study page is timed the same
   way, by performance.now() in the page when its history chart holds data points, plus
   the one API call that page waits for (all trials of the study).

Goals (issue 6): first meaningful render < 1.5 s; each trial-table page < 100 ms.
Prints a table and the machine's load average (this is a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dashboard_data import bulk_replay_study  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
STUDY = "bench-10k"
TABLE_QUERIES = [
    ("number asc", "sort=number&order=asc"),
    ("throughput desc", "sort=throughput&order=desc"),
    ("peak memory asc", "sort=peak_memory_gib&order=asc"),
    ("param micro_batch_size desc", "sort=param.micro_batch_size&order=desc"),
    ("filter status=ok + precision=bf16, by throughput", "sort=throughput&order=desc&status=ok&q=precision%3Dbf16"),
]
#: sorts/filters that no request used before: each first page is a cold view
HTTP_QUERIES = [
    ("status asc", "sort=status&order=asc"),
    ("duration desc", "sort=duration_s&order=desc"),
    ("step time asc", "sort=step_time_s&order=asc"),
    ("param precision asc", "sort=param.precision&order=asc"),
    ("param activation_checkpointing desc", "sort=param.activation_checkpointing&order=desc"),
    ("status=ok,oom by value asc", "sort=value&order=asc&status=ok,oom"),
    ("micro_batch_size>=64 + checkpointing, by number", "sort=number&order=asc&q=micro_batch_size%3E%3D64%2C%20activation_checkpointing%3Dtrue"),
    ("throughput>50000, by peak memory desc", "sort=peak_memory_gib&order=desc&q=throughput%3E50000"),
    ("status=ok + precision!=fp32, by step time", "sort=step_time_s&order=asc&status=ok&q=precision!%3Dfp32"),
]
PAGES_PER_QUERY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(name: str, command: list[str], port: int, health_path: str):
    """Start `command` (a server on 127.0.0.1:`port`), wait for `health_path`, yield its base URL."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + health_path, timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"{name} did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def serve(url: str):
    port = free_port()
    command = [sys.executable, "-m", "tuner", "serve", "--storage", url, "--port", str(port), "--no-run"]
    return running_server("tuner serve", command, port, "/api/v1/health")


def page_marks(page, base: str) -> dict[str, float]:
    page.goto(f"{base}/studies/{STUDY}")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=120_000)
    marks = page.evaluate(
        "() => ({first: +document.body.dataset.firstRender, chart: +document.body.dataset.firstChart,"
        " all: +document.body.dataset.chartsDone, rows: document.querySelectorAll('#trials tbody tr').length,"
        " points: +document.getElementById('chart-history').dataset.points})"
    )
    assert marks["rows"] == 25 and marks["points"] > 0, marks
    return marks


TABLE_JS = """async ([study, queries, pages]) => {
  const out = [];
  for (const [label, query] of queries) {
    for (let i = 0; i < pages; i++) {
      const t0 = performance.now();
      const r = await fetch(`/api/v1/dashboard/studies/${study}/trials?offset=${i * 25}&limit=25&${query}`);
      const body = await r.json();
      out.push({label, page: i, ms: performance.now() - t0, rows: body.rows.length, total: body.total});
    }
  }
  return out;
}"""


def http_table_ms(base: str) -> list[dict[str, object]]:
    out = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for label, query in HTTP_QUERIES:
            for i in range(PAGES_PER_QUERY):
                t0 = time.perf_counter()
                r = client.get(f"/api/v1/dashboard/studies/{STUDY}/trials?offset={i * 25}&limit=25&{query}")
                r.raise_for_status()
                timing = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
                out.append({"label": label, "page": i, "ms": (time.perf_counter() - t0) * 1000, "total": r.json()["total"],
                            "server_ms": float(timing["table"]), "cpu_ms": float(timing["cpu"])})
    return out


def print_table(title: str, labels: list[str], timings: list[dict[str, object]]) -> None:
    print(f"\n{title}")
    for label in labels:
        rows = [r for r in timings if r["label"] == label]
        rest = [r["ms"] for r in rows[1:]]
        print(f"  {label:50s} first {rows[0]['ms']:6.1f} ms   next {statistics.median(rest):5.1f} ms median, {max(rest):5.1f} max   ({rows[0]['total']} rows)")
        print("    every request, ms: " + " ".join(f"{r['ms']:.1f}" for r in rows))
        if "server_ms" in rows[0]:
            print("    in the handler (wall / CPU), ms: " + " ".join(f"{r['server_ms']:.1f}/{r['cpu_ms']:.1f}" for r in rows))
    every = [r["ms"] for r in timings]
    firsts = [r["ms"] for r in timings if r["page"] == 0]
    print(f"  all {len(every)} pages: median {statistics.median(every):.1f} ms, max {max(every):.1f} ms;"
          f" first pages (cold views): median {statistics.median(firsts):.1f} ms, max {max(firsts):.1f} ms")


def click_next_ms(page) -> list[float]:
    times = []
    for _ in range(5):
        before = page.inner_text("#table-range")
        t0 = time.perf_counter()
        page.click("#page-next")
        page.wait_for_function("b => document.getElementById('table-range').textContent !== b", arg=before)
        times.append((time.perf_counter() - t0) * 1000)
    return times


PEER_HISTORY_JS = """() => { const g = document.getElementById('plot-history');
  return g && g.data && g.data.some((t) => (t.x || []).length > 0) ? performance.now() : null; }"""


def serve_optuna_dashboard(url: str):
    port = free_port()
    command = [str(Path(sys.executable).with_name("optuna-dashboard")), url, "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    return running_server("optuna-dashboard", command, port, "/api/meta")


def optuna_dashboard_marks(url: str, study_id: int, runs: int, browser) -> dict[str, list[float]]:
    """optuna-dashboard's study page (cold browser cache) and its all-trials API call."""
    out: dict[str, list[float]] = {"history": [], "api": [], "first_read": []}
    with serve_optuna_dashboard(url) as base:
        # As for tuner serve: the server's first read of the study is timed apart, so the
        # page loads below compare two servers that both have the study in memory.
        t0 = time.perf_counter()
        httpx.get(f"{base}/api/studies/{study_id}?after=0", timeout=300).raise_for_status()
        out["first_read"].append((time.perf_counter() - t0) * 1000)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page.goto(f"{base}/dashboard/studies/{study_id}")
            out["history"].append(page.wait_for_function(PEER_HISTORY_JS, polling="raf", timeout=300_000).json_value())
            context.close()
        for _ in range(runs):
            t0 = time.perf_counter()
            httpx.get(f"{base}/api/studies/{study_id}?after=0", timeout=300).raise_for_status()
            out["api"].append((time.perf_counter() - t0) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the database in this folder")
    parser.add_argument("--peer-runs", type=int, default=2, help="optuna-dashboard page loads (0: skip the peer)")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from api.db.migrate import upgrade

    load_at_start = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="dash10k-"))
    url = f"sqlite:///{workdir / 'tuner.db'}"
    upgrade(url)
    write_s = bulk_replay_study(url, STUDY, args.trials)
    print(f"wrote a {args.trials}-trial study in {write_s:.1f} s ({url})")

    with serve(url) as base:
        t0 = time.perf_counter()
        httpx.get(f"{base}/api/v1/dashboard/studies/{STUDY}", timeout=120).raise_for_status()
        cold_server_s = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            cold, warm = [], []
            for _ in range(args.runs):
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                cold.append(page_marks(context.new_page(), base))
                context.close()
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            page_marks(page, base)  # fills this context's cache
            for _ in range(args.runs):
                warm.append(page_marks(page, base))
            table = page.evaluate(TABLE_JS, [STUDY, TABLE_QUERIES, PAGES_PER_QUERY])
            clicks = click_next_ms(page)
            http = http_table_ms(base)
            peer = None
            if args.peer_runs > 0:
                import optuna

                study_id = optuna.load_study(study_name=STUDY, storage=url)._study_id
                peer = optuna_dashboard_marks(url, study_id, args.peer_runs, browser)
            browser.close()

    load = os.getloadavg()
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)"
          f" at the end, {load_at_start[0]:.1f} / {load_at_start[1]:.1f} / {load_at_start[2]:.1f} at the start")
    print(f"server: first read of the study into its cache: {cold_server_s * 1000:.0f} ms (once per process)")
    print(f"\nstudy page, {args.trials} trials, 1280x800 (median of {args.runs}, min-max):")
    for name, runs in (("cold browser cache", cold), ("warm browser cache", warm)):
        for key, label in (("first", "first meaningful render"), ("chart", "first chart (history)"), ("all", "all charts drawn")):
            values = [r[key] for r in runs]
            print(f"  {name:19s} {label:26s} {statistics.median(values):7.0f} ms  ({min(values):.0f}-{max(values):.0f})")
    print_table("trial-table pages fetched from the page (25 rows):", [label for label, _ in TABLE_QUERIES], table)
    print(f"  'Next' clicked in the table, until the new rows show: median {statistics.median(clicks):.0f} ms, max {max(clicks):.0f} ms")
    print_table("trial-table pages from a plain HTTP client (httpx), views never used before:", [label for label, _ in HTTP_QUERIES], http)
    if peer is not None:
        ours_chart = statistics.median(r["chart"] for r in cold)
        ours_first = statistics.median(r["first"] for r in cold)
        theirs = statistics.median(peer["history"])
        print(f"\npeer: optuna-dashboard on the same database and browser (cold cache, median of {args.peer_runs}, min-max):")
        print(f"  server: first read of the study                  {peer['first_read'][0]:7.0f} ms (tuner serve: {cold_server_s * 1000:.0f} ms)")
        print(f"  history chart drawn                              {theirs:7.0f} ms  ({min(peer['history']):.0f}-{max(peer['history']):.0f})")
        print(f"  its all-trials API call (/api/studies/N?after=0) {statistics.median(peer['api']):7.0f} ms  ({min(peer['api']):.0f}-{max(peer['api']):.0f})")
        print(f"  ratio optuna-dashboard / tuner: history chart drawn {theirs / ours_chart:.1f}x slower;"
              f" first data on screen {theirs / ours_first:.1f}x slower (its first data is the chart)")

    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(workdir / "tuner.db", args.keep / "tuner.db")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
