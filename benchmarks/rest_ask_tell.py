"""Ask+tell pairs per second: tuner's REST API vs plain Optuna RDBStorage, same DB and sampler.

    python benchmarks/rest_ask_tell.py --pairs 200            # SQLite and PostgreSQL, TPE and random
    python benchmarks/rest_ask_tell.py --backends sqlite --pairs 200

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
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
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


def bench_rest(base: str, token: str, clients: int, pairs: int, sampler: str) -> tuple[float, list[float]]:
    headers = {"Authorization": f"Bearer {token}"}
    name = f"rest-{uuid.uuid4().hex[:8]}"
    r = httpx.post(
        f"{base}/api/v1/studies", headers=headers, timeout=60,
        json={"name": name, "space": SPACE, "run": False, "n_trials": pairs, "sampler": sampler, "pruner": "none"},
    )
    r.raise_for_status()

    def pair(state: dict) -> None:
        http = state.get("http")
        if http is None:
            http = state["http"] = httpx.Client(base_url=base, headers=headers, timeout=60)
        ask = http.post(f"/api/v1/studies/{name}/ask").json()
        n = ask["trial_number"]
        http.post(f"/api/v1/studies/{name}/trials/{n}/tell", json={"values": [_objective(ask["config"])]}).raise_for_status()

    return _run_threads(clients, pairs, pair)


def _row(backend: str, kind: str, sampler: str, clients: int, wall: float, lat: list[float], cpu_s: float) -> str:
    lat_ms = sorted(x * 1000 for x in lat)
    p50 = statistics.median(lat_ms)
    p99 = lat_ms[min(len(lat_ms) - 1, int(0.99 * len(lat_ms)))]
    return (
        f"| {backend} | {sampler} | {kind} | {clients} | {len(lat) / wall:.1f} | {p50:.1f} | {p99:.1f} "
        f"| {1000 * cpu_s / len(lat):.1f} | {os.getloadavg()[0]:.1f} |"
    )


def run_backend(backend: str, url: str, pairs: int, client_counts: list[int], samplers: list[str]) -> list[str]:
    from api.db.migrate import upgrade

    upgrade(url)
    token = new_token(url)
    rows = []
    server = LiveServer(url, "--no-run").start()
    assert server.proc is not None
    try:
        # warm both paths once (imports, connection pools), not measured
        bench_optuna(url, 1, 5, "random")
        bench_rest(server.base, token, 1, 5, "random")
        for sampler in samplers:
            for clients in client_counts:
                cpu0 = _cpu_s()
                wall, lat = bench_optuna(url, clients, pairs, sampler)
                rows.append(_row(backend, "optuna RDBStorage", sampler, clients, wall, lat, _cpu_s() - cpu0))
                print(rows[-1], flush=True)
                cpu0 = _cpu_s(server.proc.pid)
                wall, lat = bench_rest(server.base, token, clients, pairs, sampler)
                rows.append(_row(backend, "tuner REST", sampler, clients, wall, lat, _cpu_s(server.proc.pid) - cpu0))
                print(rows[-1], flush=True)
    finally:
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
                run_backend("SQLite", f"sqlite:///{tmp}/bench.db", args.pairs, args.clients, args.samplers)
        elif pg_reachable():
            with pg_schema_db() as url:
                run_backend("PostgreSQL", url, args.pairs, args.clients, args.samplers)
        else:
            print("| PostgreSQL | | skipped: 127.0.0.1:5432 unreachable | | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
