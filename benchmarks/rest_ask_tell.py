"""Ask+tell pairs per second: tuner's REST API vs plain Optuna RDBStorage, same DB and sampler.

    python benchmarks/rest_ask_tell.py --pairs 200            # SQLite and PostgreSQL, TPE and random
    python benchmarks/rest_ask_tell.py --backends sqlite --pairs 200
    python benchmarks/rest_ask_tell.py --pg-synchronous-commit on   # only the durable default

For each backend and each client count (1 and 8):
- optuna: `optuna.create_study(storage=URL)` (plain RDBStorage, Optuna's defaults) and
  `study.ask()` -> `space.suggest(trial)` -> `study.tell(trial, value)` in N threads;
- rest: `tuner serve --no-run` on the same kind of database, an ask/tell study with the
  same space and sampler (tuner.samplers.make_sampler: TPE, seed 0), N client threads each
  with its own keep-alive httpx connection doing POST /ask then POST /tell.

Throughput is pairs / wall time; latency is per pair (ask + tell) as the client sees it.
"CPU ms/pair" is CPU time per pair, which machine load barely changes: for optuna the
benchmark process's (all its threads), for rest the server process's (from /proc).

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
import statistics
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
    """CPU seconds (user + system) used so far by process `pid` (default: this one)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_threads(clients: int, pairs: int, one_pair) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    lock = threading.Lock()
    per_thread = [pairs // clients + (1 if i < pairs % clients else 0) for i in range(clients)]

    def work(n: int) -> None:
        state: dict = {}
        mine = []
        for _ in range(n):
            t0 = time.perf_counter()
            one_pair(state)
            mine.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies


def bench_optuna(url: str, clients: int, pairs: int, sampler: str) -> tuple[float, list[float]]:
    import optuna

    from tuner.samplers import make_sampler
    from tuner.space import SearchSpace
    from tuner.study_spec import StudySpec

    space = SearchSpace.from_dict(SPACE)
    spec = StudySpec(name=f"optuna-{uuid.uuid4().hex[:8]}", workload="external", space=space, n_trials=pairs, sampler=sampler, pruner="none")
    study = optuna.create_study(study_name=spec.name, storage=url, sampler=make_sampler(spec, space), direction="maximize")

    def pair(_: dict) -> None:
        trial = study.ask()
        config = space.to_config(space.suggest(trial)).to_dict()
        study.tell(trial, _objective(config))

    return _run_threads(clients, pairs, pair)


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
    base: str, token: str, clients: int, pairs: int, sampler: str, client: str = "http.client"
) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    name = f"rest-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        f"{base}/api/v1/studies", headers=headers, timeout=60,
        json={"name": name, "space": SPACE, "run": False, "n_trials": pairs, "sampler": sampler, "pruner": "none"},
    )
    r.raise_for_status()
    make_client = CLIENTS[client]

    def pair(state: dict) -> None:
        conn = state.get("conn")
        if conn is None:
            conn = state["conn"] = make_client(base, token)
        ask = conn.post(f"/api/v1/studies/{name}/ask")
        n = ask["trial_number"]
        told = conn.post(f"/api/v1/studies/{name}/trials/{n}/tell", {"values": [_objective(ask["config"])]})
        assert told["state"] == "COMPLETE", told

    return _run_threads(clients, pairs, pair)


def _row(backend: str, kind: str, sampler: str, clients: int, wall: float, lat: list[float], cpu_s: float) -> str:
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
    return (
        f"| {backend} | {sampler} | {kind} | {clients} | {len(lat) / wall:.1f} | {p50:.1f} | {p99:.1f} "
        f"| {1000 * cpu_s / len(lat):.1f} | {os.getloadavg()[0]:.1f} |"
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
) -> list[str]:
    from api.db.migrate import upgrade

    upgrade(url)
    token = new_token(url)
    rows = []
    servers: dict[str, LiveServer] = {}
    try:
        for setting in sync_settings:
            servers[setting] = _start_server(url, setting)
        # warm both paths once (imports, connection pools), not measured
        bench_optuna(url, 1, 5, "random")
        for server in servers.values():
            bench_rest(server.base, token, 1, 5, "random")
        for sampler in samplers:
            for clients in client_counts:
                cpu0 = _cpu_s()
                wall, lat = bench_optuna(url, clients, pairs, sampler)
                rows.append(_row(backend, "optuna RDBStorage", sampler, clients, wall, lat, _cpu_s() - cpu0))
                print(rows[-1], flush=True)
                for setting, server in servers.items():
                    assert server.proc is not None
                    label = "tuner REST" if setting == "on" else "tuner REST, synchronous_commit=off"
                    cpu0 = _cpu_s(server.proc.pid)
                    wall, lat = bench_rest(server.base, token, clients, pairs, sampler, client)
                    rows.append(_row(backend, label, sampler, clients, wall, lat, _cpu_s(server.proc.pid) - cpu0))
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
    args = parser.parse_args()
    if not args.stock_tpe_peer:
        from api.services import tpe_speedup

        tpe_speedup.install()
    print("| database | sampler | path | clients | pairs/s | p50 ms/pair | p99 ms/pair | CPU ms/pair | load |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for backend in args.backends:
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                run_backend("SQLite", f"sqlite:///{tmp}/bench.db", args.pairs, args.clients, args.samplers, args.client)
        elif pg_reachable():
            with pg_schema_db() as url:
                run_backend(
                    "PostgreSQL", url, args.pairs, args.clients, args.samplers, args.client, tuple(args.pg_synchronous_commit)
                )
        else:
            print("| PostgreSQL | | skipped: 127.0.0.1:5432 unreachable | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
