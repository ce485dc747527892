"""Ask+tell pairs per second: tuner's REST API vs plain Optuna RDBStorage, same DB and sampler.

    python benchmarks/rest_ask_tell.py --pairs 200            # SQLite and PostgreSQL, TPE and random
    python benchmarks/rest_ask_tell.py --backends sqlite --pairs 200
    python benchmarks/rest_ask_tell.py --pg-synchronous-commit on   # only the durable default

For each backend and each client count (1 and 8):
- optuna: `optuna.create_study(storage=URL)` (plain RDBStorage, Optuna's defaults) and
  `study.ask()` -> `space.suggest(trial)` -> `study.tell(trial, value)` in N threads;
- rest: `tuner serve --no-run` on the same kind of database, an ask/tell study with the
  same space and sampler (tuner.study.samplers.make_sampler: TPE, seed 0), N client threads each
  with its own keep-alive httpx connection doing POST /ask then POST /tell.

Throughput is pairs / wall time; latency is per pair (ask + tell) and per request as the
client sees it, in steady state: each client's first pair on the fresh study is shown
apart ("first pair": the server loads the study's copy for it, all clients at once).
With several clients each measurement also runs with a training step (--step-ms, default
50 ms, jittered +-50%) between ask and tell, as real ask/tell clients have one.
"CPU ms/pair" is CPU time per pair, which machine load barely changes: for optuna the
benchmark process's (all its threads), for rest the server's and its child processes'
(the trial writer, api.writer_process), from /proc.

Both sides run the same sampler code: the server's vectorised TPE `log_ndtr`
(api.services.tpe_speedup) is installed on the optuna side too, so the ratio measures
storage and transport; --stock-tpe-peer leaves the optuna side on stock Optuna code.

On PostgreSQL the REST side runs twice by default: with the writer's synchronous_commit on
(the default, fully durable) and off (TUNER_PG_SYNCHRONOUS_COMMIT=off, see api.trial_writer).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests._api_support import TINY_SPACE, LiveServer, new_token, pg_reachable, pg_schema_db  # noqa: E402

SPACE = {
    "name": "bench",
    "params": {
        "micro_batch_size": {"type": "int", "low": 1, "high": 256, "log": True},
        "gradient_accumulation_steps": {"type": "int", "low": 1, "high": 8},
        "precision": {"type": "categorical", "choices": ["fp32", "tf32", "bf16", "fp16"]},
        "learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
    },
}
assert TINY_SPACE  # the tests' space is smaller; the benchmark uses 4 knobs


def _objective(config: dict) -> float:
    return float(config["micro_batch_size"]) * (2.0 if config["precision"] == "bf16" else 1.0) / config["gradient_accumulation_steps"]


def _cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process `pid` and its live child
    processes (default: this process alone)."""
    if pid is None:
        return time.process_time()
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):  # fields[1]: the parent pid
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class Timings:
    """Latencies of one measurement: each pair (ask + tell, without any training step
    between them) and each request on its own, in steady state; and apart from those,
    each client's first pair on the fresh study (`cold`: the server loads the study's
    in-memory copy for the first ask, and all clients ask at the same moment)."""

    def __init__(self) -> None:
        self.pairs: list[float] = []
        self.asks: list[float] = []
        self.tells: list[float] = []
        self.cold: list[float] = []

    def extend(self, other: Timings) -> None:
        self.pairs += other.pairs
        self.asks += other.asks
        self.tells += other.tells
        self.cold += other.cold


def _run_threads(clients: int, pairs: int, one_pair, think_s: float = 0.0) -> tuple[float, Timings]:  # type: ignore[no-untyped-def]
    """Run `pairs` pairs over `clients` threads. `one_pair(state, step_s)` returns the
    (ask, tell) latencies in seconds and sleeps `step_s` between them (a training step:
    `think_s` +-50%, so the clients do not march in lockstep as identical steps would)."""
    timings = Timings()
    lock = threading.Lock()
    per_thread = [pairs // clients + (1 if i < pairs % clients else 0) for i in range(clients)]

    def work(n: int, seed: int) -> None:
        state: dict = {}
        mine = Timings()
        jitter = random.Random(seed)
        for i in range(n):
            ask_s, tell_s = one_pair(state, think_s * jitter.uniform(0.5, 1.5))
            if i == 0:
                mine.cold.append(ask_s + tell_s)
                continue
            mine.asks.append(ask_s)
            mine.tells.append(tell_s)
            mine.pairs.append(ask_s + tell_s)
        with lock:
            timings.extend(mine)

    threads = [threading.Thread(target=work, args=(n, seed)) for seed, n in enumerate(per_thread)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, timings


def bench_optuna(url: str, clients: int, pairs: int, sampler: str, think_s: float = 0.0) -> tuple[float, Timings]:
    import optuna

    from tuner.space.search_space import SearchSpace
    from tuner.study.samplers import make_sampler
    from tuner.study.spec import StudySpec

    space = SearchSpace.from_dict(SPACE)
    spec = StudySpec(name=f"optuna-{uuid.uuid4().hex[:8]}", workload="external", space=space, n_trials=pairs, sampler=sampler, pruner="none")
    study = optuna.create_study(study_name=spec.name, storage=url, sampler=make_sampler(spec, space), direction="maximize")

    def pair(_: dict, think: float) -> tuple[float, float]:
        t0 = time.perf_counter()
        trial = study.ask()
        config = space.to_config(space.suggest(trial)).to_dict()
        t1 = time.perf_counter()
        if think:
            time.sleep(think)
        t2 = time.perf_counter()
        study.tell(trial, _objective(config))
        return t1 - t0, time.perf_counter() - t2

    return _run_threads(clients, pairs, pair, think_s)


def tpe_ask_ms(pairs: int) -> float:
    """Mean CPU of one TPE ask (+ tell) on an in-memory study: the sampler's own cost."""
    import optuna

    from tuner.space.search_space import SearchSpace
    from tuner.study.samplers import make_sampler
    from tuner.study.spec import StudySpec

    space = SearchSpace.from_dict(SPACE)
    spec = StudySpec(name="floor", workload="external", space=space, n_trials=pairs, sampler="tpe", pruner="none")
    study = optuna.create_study(sampler=make_sampler(spec, space), direction="maximize")
    cpu0 = time.process_time()
    for _ in range(pairs):
        trial = study.ask()
        study.tell(trial, _objective(space.to_config(space.suggest(trial)).to_dict()))
    return 1000 * (time.process_time() - cpu0) / pairs


class KeepAliveClient:
    """One client's keep-alive HTTP/1.1 connection (stdlib `http.client`).

    The clients share the 2 cores with the server in this benchmark, so they should cost
    as little as possible: httpx spends ~2.5 ms CPU per request here, http.client ~0.3 ms
    (measure both with --client). Real ask/tell clients run on the training machines.
    """

    def __init__(self, base: str, token: str) -> None:
        url = urllib.parse.urlsplit(base)
        self._conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def post(self, path: str, body: dict | None = None) -> dict:
        # bytes body: http.client sends headers and body in one send(), no Nagle stall
        self._conn.request("POST", path, body=json.dumps(body).encode() if body is not None else b"", headers=self._headers)
        response = self._conn.getresponse()
        payload = response.read()
        if response.status >= 400:
            raise RuntimeError(f"POST {path}: HTTP {response.status}: {payload[:300]!r}")
        return json.loads(payload)


class HttpxClient:
    """The same requests through httpx (the library tuner's Python client uses)."""

    def __init__(self, base: str, token: str) -> None:
        self._http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def post(self, path: str, body: dict | None = None) -> dict:
        response = self._http.post(path, json=body)
        response.raise_for_status()
        return response.json()


CLIENTS = {"http.client": KeepAliveClient, "httpx": HttpxClient}


def bench_rest(
    base: str, token: str, clients: int, pairs: int, sampler: str, client: str = "http.client", think_s: float = 0.0
) -> tuple[float, Timings]:
    headers = {"Authorization": f"Bearer {token}"}
    name = f"rest-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        f"{base}/api/v1/studies", headers=headers, timeout=60,
        json={"name": name, "space": SPACE, "run": False, "n_trials": pairs, "sampler": sampler, "pruner": "none"},
    )
    r.raise_for_status()
    make_client = CLIENTS[client]

    def pair(state: dict, think: float) -> tuple[float, float]:
        conn = state.get("conn")
        if conn is None:
            conn = state["conn"] = make_client(base, token)
        t0 = time.perf_counter()
        ask = conn.post(f"/api/v1/studies/{name}/ask")
        t1 = time.perf_counter()
        if think:
            time.sleep(think)
        n = ask["trial_number"]
        t2 = time.perf_counter()
        told = conn.post(f"/api/v1/studies/{name}/trials/{n}/tell", {"values": [_objective(ask["config"])]})
        t3 = time.perf_counter()
        assert told["state"] == "COMPLETE", told
        return t1 - t0, t3 - t2

    return _run_threads(clients, pairs, pair, think_s)


def _pct(values: list[float], q: float) -> float:
    """The q-quantile in ms (nearest rank)."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _row(backend: str, kind: str, sampler: str, clients: str, wall: float, t: Timings, cpu_s: float) -> str:
    n = len(t.pairs) + len(t.cold)  # throughput and CPU count every pair, cold ones too
    return (
        f"| {backend} | {sampler} | {kind} | {clients} | {n / wall:.1f} | {_pct(t.pairs, 0.5):.1f} | {_pct(t.pairs, 0.99):.1f} "
        f"| {_pct(t.asks, 0.99):.1f} | {_pct(t.tells, 0.99):.1f} | {1000 * max(t.cold):.1f} "
        f"| {1000 * cpu_s / n:.1f} | {os.getloadavg()[0]:.1f} |"
    )


HEADER = (
    "| database | sampler | path | clients | pairs/s | p50 ms/pair | p99 ms/pair | p99 ms/ask | p99 ms/tell "
    "| max ms, first pair | CPU ms/pair | load |\n"
    "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def _start_server(url: str, synchronous_commit: str) -> LiveServer:
    """`tuner serve --no-run` with the writer's PostgreSQL synchronous_commit set (the
    server reads TUNER_PG_SYNCHRONOUS_COMMIT at start; SQLite ignores it)."""
    previous = os.environ.get(SYNC_ENV)
    os.environ[SYNC_ENV] = synchronous_commit
    try:
        return LiveServer(url, "--no-run").start()
    finally:
        if previous is None:
            os.environ.pop(SYNC_ENV)
        else:
            os.environ[SYNC_ENV] = previous


SYNC_ENV = "TUNER_PG_SYNCHRONOUS_COMMIT"


def run_backend(
    backend: str,
    url: str,
    pairs: int,
    client_counts: list[int],
    samplers: list[str],
    client: str = "http.client",
    sync_settings: tuple[str, ...] = ("on",),
    step_ms: float = 0.0,
) -> list[str]:
    from api.db.migrate import upgrade

    upgrade(url)
    token = new_token(url)
    rows = []
    servers: dict[str, LiveServer] = {}
    try:
        for setting in sync_settings:
            servers[setting] = _start_server(url, setting)
        # warm both paths once, not measured: imports, connection pools, and the server's
        # writer and sampler child processes (started on the first ask/tell study that
        # needs them, once per server)
        bench_optuna(url, 1, 5, "random")
        for server in servers.values():
            for sampler in samplers:
                bench_rest(server.base, token, 1, 5, sampler)
        for sampler in samplers:
            for clients in client_counts:
                # back to back (no step) and, with several clients, also with a training
                # step between ask and tell, as real ask/tell clients have
                steps = [0.0] + ([step_ms / 1000] if step_ms > 0 and clients > 1 else [])
                for step_s in steps:
                    shown = f"{clients}" if not step_s else f"{clients}, {step_ms:g} ms step"
                    cpu0 = _cpu_s()
                    wall, lat = bench_optuna(url, clients, pairs, sampler, step_s)
                    rows.append(_row(backend, "optuna RDBStorage", sampler, shown, wall, lat, _cpu_s() - cpu0))
                    print(rows[-1], flush=True)
                    for setting, server in servers.items():
                        assert server.proc is not None
                        label = "tuner REST" if setting == "on" else "tuner REST, synchronous_commit=off"
                        cpu0 = _cpu_s(server.proc.pid)
                        wall, lat = bench_rest(server.base, token, clients, pairs, sampler, client, step_s)
                        rows.append(_row(backend, label, sampler, shown, wall, lat, _cpu_s(server.proc.pid) - cpu0))
                        print(rows[-1], flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def main() -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=300, help="ask+tell pairs per measurement")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random"], choices=["tpe", "random"])
    parser.add_argument("--client", default="http.client", choices=sorted(CLIENTS), help="HTTP library of the REST clients")
    parser.add_argument(
        "--pg-synchronous-commit", nargs="+", default=["on", "off"], choices=["on", "off"],
        help="PostgreSQL: REST rows with the writer's synchronous_commit on (durable, the default) and/or off",
    )
    parser.add_argument("--stock-tpe-peer", action="store_true", help="run the optuna side on stock Optuna TPE code")
    parser.add_argument(
        "--step-ms", type=float, default=50.0,
        help="with several clients, also measure with a training step of this many ms between ask and tell (0: skip)",
    )
    args = parser.parse_args()
    if not args.stock_tpe_peer:
        from api.services import tpe_speedup

        tpe_speedup.install()
    print(HEADER)
    for backend in args.backends:
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                run_backend(
                    "SQLite", f"sqlite:///{tmp}/bench.db", args.pairs, args.clients, args.samplers, args.client,
                    step_ms=args.step_ms,
                )
        elif pg_reachable():
            with pg_schema_db() as url:
                run_backend(
                    "PostgreSQL", url, args.pairs, args.clients, args.samplers, args.client,
                    tuple(args.pg_synchronous_commit), step_ms=args.step_ms,
                )
        else:
            print("| PostgreSQL | | skipped: 127.0.0.1:5432 unreachable | | | | | | | | | |")
    if "tpe" in args.samplers:
        ask_ms = tpe_ask_ms(args.pairs)
        print(
            f"\nTPE floor: one TPE ask of this space costs {ask_ms:.1f} ms in memory (no storage, no HTTP; "
            f"mean over trials 0-{args.pairs}). Asks of one study are sampled one at a time, so a closed "
            f"loop of N clients with no step waits about N x {ask_ms:.1f} ms per pair whatever the "
            f"storage does (8 clients: {8 * ask_ms:.0f} ms)."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
