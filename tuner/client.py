"""Python client of the tuner REST API (httpx; never imports `api`).

    from tuner.client import TunerClient

    client = TunerClient("http://127.0.0.1:8000", token="tnr_...")
    study = client.create_study("my-study", space="search_spaces/gpt_tiny_system.yaml", workload="gpt", n_trials=20)
    study.wait(progress=True)
    print(study.best_config())

Ask/tell around your own PyTorch training script: knobs under `params:` (tuner's names,
read from `trial.config`), the script's own hyperparameters under `hparams:` (any name,
read from `trial.hparams` with their types), and an objective of any name with a
direction (docs/api.md has this loop complete, with the script; a test runs it):

    space = {
        "name": "my-script",
        "params": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "warmup_ratio": {"type": "float", "low": 0.0, "high": 0.2},
            "micro_batch_size": {"type": "int", "low": 16, "high": 128, "step": 16},
        },
        "hparams": {
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "n_layers": {"type": "int", "low": 1, "high": 3},
            "optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]},
            "nesterov": {"type": "bool", "when": {"optimizer": "sgd"}},
        },
    }
    study = client.create_study("my-script", space=space, run=False, n_trials=20, objectives=["val_acc:max"])
    for _ in range(20):
        with study.ask() as trial:  # an exception inside tells "failed" for you
            c = trial.config
            accuracy = train(c.learning_rate, c.warmup_ratio, c.micro_batch_size, **trial.hparams)
            trial.tell({"val_acc": accuracy})
    best = study.best()  # best.config, best.hparams, best.objective_values["val_acc"]
    print(study.export("torch"))  # every tuned knob and hparam applied

Reporting intermediate values lets the pruner stop a trial early (report the objective's
own quantity, e.g. the accuracy so far, so it compares like with like):

    with study.ask() as trial:
        for epoch in range(10):
            if trial.report(epoch, accuracy_so_far(trial)):
                raise TrialPruned()  # the with-block tells "pruned" for you

Tokens (an admin token manages them, as `tuner token` does):

    admin = TunerClient(url, token="tnr_admin...")
    worker = admin.create_token("worker-1", scopes=["ask_tell"], owner="team-a")
    print(worker.token)  # shown once
    admin.revoke_token("worker-1")  # refused at once by this server

Errors come back as the same types the library raises: a `ValidationError` with every
`FieldProblem` the server found (422), `StudyNotFoundError` (404), or `TunerAPIError`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import httpx

from tuner.errors import FieldProblem, StudyNotFoundError, TrialPruned, TunerError, ValidationError
from tuner.inference.config import InferenceConfig, stored_config
from tuner.types import TrialConfig

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace

API = "/api/v1"
FINISHED_STATES = ("completed", "stopped", "failed")
ExportFormat = Literal["json", "yaml", "torch"]


class TunerAPIError(TunerError):
    """An error answer of the service, with its HTTP status and field problems."""

    def __init__(self, status: int, title: str, detail: str, problems: list[FieldProblem], retryable: bool) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.problems = problems
        self.retryable = retryable


class AuthError(TunerAPIError):
    """401/403: no token, or an unknown or revoked one."""


class ConflictError(TunerAPIError):
    """409: the request conflicts with the study's state (e.g. a name already taken)."""


class TokenNotFoundError(TunerAPIError, LookupError):
    """404 from the token routes: no active token of that name."""


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"title": response.reason_phrase, "detail": response.text[:500]}
    problems = [
        FieldProblem(p.get("field", "?"), p.get("value"), p.get("problem", ""), p.get("fix", ""), p.get("source"))
        for p in body.get("problems") or []
    ]
    status = response.status_code
    title = str(body.get("title", response.reason_phrase))
    detail = str(body.get("detail", ""))
    retryable = bool(body.get("retryable", status >= 500))
    if status == 422 and problems:
        raise ValidationError(problems)
    if status == 404 and any(p.field in ("name", "study") for p in problems):
        raise StudyNotFoundError(detail)
    if status in (401, 403):
        raise AuthError(status, title, detail, problems, retryable)
    if status == 409:
        raise ConflictError(status, title, detail, problems, retryable)
    raise TunerAPIError(status, title, detail, problems, retryable)


@dataclass(frozen=True)
class StudyInfo:
    """A study as the service reports it."""

    name: str
    state: str
    mode: str
    workload: str
    objectives: tuple[str, ...]
    progress: dict[str, Any]
    best: dict[str, Any] | None
    reason: str | None
    raw: dict[str, Any] = field(repr=False)
    directions: tuple[str, ...] = ()  # maximize/minimize, one per objective
    objective_names: tuple[str, ...] = ()  # "val_acc:max" -> "val_acc"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StudyInfo:
        return cls(
            name=data["name"],
            state=data["state"],
            mode=data["mode"],
            workload=data["workload"],
            objectives=tuple(data.get("objectives") or ()),
            progress=data.get("progress") or {},
            best=data.get("best"),
            reason=data.get("reason"),
            raw=data,
            directions=tuple(data.get("directions") or ()),
            objective_names=tuple(data.get("objective_names") or ()),
        )

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


@dataclass(frozen=True)
class TrialInfo:
    """One trial: its config, values, metrics, intermediate values and why it ended."""

    number: int
    state: str
    status: str | None
    values: tuple[float, ...] | None
    config: TrialConfig | InferenceConfig | None
    metrics: dict[str, Any]
    intermediate_values: dict[int, float]
    telemetry: dict[str, Any]
    reason: str | None
    duration_s: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialInfo:
        return cls(
            number=data["number"],
            state=data["state"],
            status=data.get("status"),
            values=tuple(data["values"]) if data.get("values") is not None else None,
            config=stored_config(data["config"]) if data.get("config") else None,
            metrics=data.get("metrics") or {},
            intermediate_values={int(k): v for k, v in (data.get("intermediate_values") or {}).items()},
            telemetry=data.get("telemetry") or {},
            reason=data.get("reason"),
            duration_s=data.get("duration_s"),
        )


@dataclass(frozen=True)
class ResultPoint:
    """A best or Pareto-optimal trial."""

    number: int
    config: TrialConfig | InferenceConfig  # InferenceConfig: a kind: inference study
    values: tuple[float, ...] | None
    metrics: dict[str, Any]
    hparams: dict[str, Any] = field(default_factory=dict)  # the space's hparams:, types kept
    objective_values: dict[str, float] | None = None  # values by objective name


@dataclass(frozen=True)
class TokenInfo:
    """A bearer token as the service lists it (never the token itself)."""

    name: str
    owner: str
    scopes: tuple[str, ...]  # read, ask_tell, create, admin
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TokenInfo:
        revoked = data.get("revoked_at")
        return cls(
            name=data["name"],
            owner=data["owner"],
            scopes=tuple(data["scopes"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            revoked_at=datetime.fromisoformat(revoked) if revoked else None,
        )


@dataclass(frozen=True)
class CreatedToken(TokenInfo):
    """A token just created: `token` is the bearer token, shown this once."""

    token: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CreatedToken:
        info = TokenInfo.from_json(data)
        return cls(info.name, info.owner, info.scopes, info.created_at, info.revoked_at, token=data["token"])


@dataclass(frozen=True)
class GainReport:
    """How much faster (or better) a study's best config is than the default, worded as
    `tuner tune`, `tuner best` and the dashboard word it (tuner.study.gain.Gain's fields)."""

    value: float | None  # the ratio to the default config; None when there is none (`text` says why)
    source: str  # "confirmation" (back-to-back pairs) | "search" (one measurement each) | "none"
    figure: str | None  # "x1.74"
    description: str  # "median of 3 back-to-back pairs, range 1.21-2.28, not significant"
    text: str  # figure + description: the one line every place shows
    significant: bool | None  # the confirmation's verdict; None without one
    pairs: int | None
    ratio_range: tuple[float, float] | None
    raw: dict[str, Any] = field(repr=False)  # every field the server sent (noise, measured, ...)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GainReport:
        bounds = data.get("ratio_range")
        return cls(
            value=data.get("value"),
            source=data["source"],
            figure=data.get("figure"),
            description=data.get("description", ""),
            text=data["text"],
            significant=data.get("significant"),
            pairs=data.get("pairs"),
            ratio_range=(float(bounds[0]), float(bounds[1])) if bounds else None,
            raw=data,
        )


class TunerClient:
    """A connection to a tuner service. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> TunerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -------------------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, API + path, **kwargs)
        _raise_for(response)
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def _pages(self, path: str, params: dict[str, Any], page_size: int = 200) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.request("GET", path, params={**params, "offset": offset, "limit": page_size})
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    # -- studies --------------------------------------------------------------------------
    def create_study(
        self,
        name: str,
        space: SearchSpace | Mapping[str, Any] | str | Path,
        workload: str | None = None,
        *,
        workload_params: Mapping[str, Any] | None = None,
        objectives: tuple[str, ...] | list[str] = ("throughput",),
        sampler: str = "tpe",
        pruner: str = "median",
        n_trials: int | None = 20,
        timeout_s: float | None = None,
        budget: Mapping[str, Any] | None = None,
        run: bool = True,
        **options: Any,
    ) -> Study:
        """Create a study; `run=False` makes an ask/tell study whose trials you run yourself.

        `space` is a `SearchSpace`, a dict in the file form, a path to a YAML/JSON file
        (read here, relative to the current directory; a missing one is "file not found:
        PATH"), the name of a shipped preset ("gpt_tiny_system"), or YAML/JSON text.
        `options` are the other `StudySpec` fields (seed, workers, device,
        memory_limit_bytes, baseline, use_generator, and for ask/tell `trial_timeout_s`: a
        trial with no report, `heartbeat()` or tell for that long expires to failed).
        """
        body: dict[str, Any] = {
            "name": name,
            "space": _space_payload(space),
            "workload": workload,
            "workload_params": dict(workload_params or {}),
            "objectives": list(objectives),
            "sampler": sampler,
            "pruner": pruner,
            "n_trials": n_trials,
            "timeout_s": timeout_s,
            "run": run,
            **options,
        }
        if budget is not None:
            body["budget"] = dict(budget)
        if tuple(objectives) == ("throughput",) and isinstance(body["space"], Mapping) and body["space"].get("kind") == "inference":
            del body["objectives"]  # the service's default for an inference space: qps_at_slo
        data = self.request("POST", "/studies", json=body)
        return Study(self, data["name"])

    def study(self, name: str) -> Study:
        """A handle on an existing study (raises StudyNotFoundError when there is none)."""
        study = Study(self, name)
        study.info()
        return study

    def studies(self, *, state: str | None = None, workload: str | None = None) -> list[StudyInfo]:
        params = {k: v for k, v in {"state": state, "workload": workload}.items() if v is not None}
        return [StudyInfo.from_json(d) for d in self._pages("/studies", params)]

    # -- catalog --------------------------------------------------------------------------
    def workloads(self) -> list[dict[str, Any]]:
        return self.request("GET", "/workloads")

    def hardware(self) -> dict[str, Any]:
        return self.request("GET", "/hardware")

    def validate_space(self, space: SearchSpace | Mapping[str, Any] | str | Path) -> list[FieldProblem]:
        """Every problem the server finds in `space` (empty when it is valid)."""
        data = self.request("POST", "/spaces/validate", json={"space": _space_payload(space)})
        return [FieldProblem(p["field"], p.get("value"), p["problem"], p["fix"], p.get("source")) for p in data["problems"]]

    def health(self) -> bool:
        return self.request("GET", "/health")["status"] == "ok"

    # -- tokens (admin scope) -------------------------------------------------------------
    def tokens(self) -> list[TokenInfo]:
        """Every token, revoked ones too (their revoked_at set)."""
        return [TokenInfo.from_json(d) for d in self.request("GET", "/tokens")]

    def create_token(self, name: str, *, scopes: Iterable[str] | None = None, owner: str | None = None) -> CreatedToken:
        """A new token; `scopes` from read, ask_tell, create, admin (the server's default:
        read ask_tell create), `owner` the studies it acts for (default: its name)."""
        body: dict[str, Any] = {"name": name, "owner": owner}
        if scopes is not None:
            body["scopes"] = sorted(set(scopes))
        return CreatedToken.from_json(self.request("POST", "/tokens", json=body))

    def revoke_token(self, name: str) -> None:
        """Revoke a token: refused at once by this server, within the servers'
        token_cache_s (default 5 s) by the others of the same database. Raises
        TokenNotFoundError when no active token has that name."""
        response = self._http.request("DELETE", f"{API}/tokens/{name}")
        if response.status_code == 404:  # not a study: _raise_for would say StudyNotFoundError
            body = response.json()
            problems = [FieldProblem(p["field"], p.get("value"), p["problem"], p["fix"]) for p in body.get("problems") or []]
            raise TokenNotFoundError(404, str(body.get("title", "Not found")), str(body.get("detail", "")), problems, False)
        _raise_for(response)


def _space_payload(space: Any) -> dict[str, Any] | str:
    if hasattr(space, "to_dict"):
        return space.to_dict()
    if isinstance(space, Mapping):
        return dict(space)
    path = _space_path(space)
    if path is not None:
        # The client reads local files; the server never opens a path from a request.
        return path.read_text()
    if isinstance(space, str):
        return space
    raise ValidationError(
        FieldProblem("space", type(space).__name__, "is not a search space", "pass a SearchSpace, a dict, a file path or YAML text")
    )


def _space_path(space: Any) -> Path | None:
    """The local file `space` names, resolved against the caller's working directory; None
    when it is not a path (a preset name or YAML text, sent as is). A path that names no
    file is a ValidationError "file not found: PATH" with the absolute path."""
    if isinstance(space, str) and ("\n" in space or "{" in space or ":" in space.split("/")[0]):
        return None  # YAML/JSON text
    if isinstance(space, str) and not (space.endswith((".yaml", ".yml", ".json")) or "/" in space or space.startswith("~")):
        candidate = Path(space)
        return candidate.resolve() if candidate.is_file() else None  # else a preset name
    if not isinstance(space, (str, Path)):
        return None
    path = (Path.cwd() / Path(space).expanduser()).resolve()
    if not path.is_file():
        raise ValidationError(
            FieldProblem("space", str(space), f"file not found: {path}", "give the path of a .yaml/.json space file (relative paths start at the current directory), or a preset name")
        )
    return path


class Study:
    """A study on the service."""

    def __init__(self, client: TunerClient, name: str) -> None:
        self.client = client
        self.name = name

    def __repr__(self) -> str:
        return f"Study({self.name!r})"

    def info(self) -> StudyInfo:
        return StudyInfo.from_json(self.client.request("GET", f"/studies/{self.name}"))

    def wait(self, progress: bool = False, *, timeout: float | None = None, poll_s: float = 1.0) -> StudyInfo:
        """Block until the study is completed, stopped or failed; print progress if asked."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.info()
            if progress:
                p = info.progress
                best = info.best["values"] if info.best else None
                print(
                    f"\r{self.name}: {info.state} {p.get('complete', 0)} done, {p.get('pruned', 0)} pruned, "
                    f"{p.get('failed', 0)} failed, {p.get('running', 0)} running of {p.get('n_trials')}; best {best}",
                    end="\n" if info.finished else "",
                    file=sys.stderr,
                    flush=True,
                )
            if info.finished:
                return info
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"study {self.name!r} is still {info.state} after {timeout} s")
            time.sleep(poll_s)

    def trials(self, *, state: str | None = None, sort: str = "number", descending: bool = False) -> list[TrialInfo]:
        params: dict[str, Any] = {"sort": sort, "order": "desc" if descending else "asc"}
        if state is not None:
            params["state"] = state
        return [TrialInfo.from_json(d) for d in self.client._pages(f"/studies/{self.name}/trials", params)]

    def trial(self, number: int) -> TrialInfo:
        return TrialInfo.from_json(self.client.request("GET", f"/studies/{self.name}/trials/{number}"))

    def best_config(self) -> TrialConfig | InferenceConfig:
        return self.best().config

    def best(self) -> ResultPoint:
        data = self.client.request("GET", f"/studies/{self.name}/best")
        return _points(data)[0]

    def pareto(self) -> list[ResultPoint]:
        return _points(self.client.request("GET", f"/studies/{self.name}/pareto"))

    def gain_report(self) -> GainReport:
        """The gain of the best config over the default, as the dashboard shows it (read
        from the dashboard's study summary, which words it with tuner.study.gain)."""
        return GainReport.from_json(self.client.request("GET", f"/dashboard/studies/{self.name}")["gain_report"])

    def export(self, format: ExportFormat = "yaml", *, pareto: bool = False) -> str:
        """The best config (or the Pareto front) as a JSON/YAML document or a torch snippet."""
        which = "pareto" if pareto else "best"
        return self.client.request("GET", f"/studies/{self.name}/{which}", params={"format": format})["content"]

    def stop(self) -> StudyInfo:
        return StudyInfo.from_json(self.client.request("POST", f"/studies/{self.name}/stop"))

    def resume(self) -> StudyInfo:
        return StudyInfo.from_json(self.client.request("POST", f"/studies/{self.name}/resume"))

    def delete(self) -> None:
        self.client.request("DELETE", f"/studies/{self.name}")

    def ask(self) -> AskedTrial:
        """A new trial to run yourself; use it as a context manager (see the module docs)."""
        data = self.client.request("POST", f"/studies/{self.name}/ask")
        return AskedTrial(
            self, data["trial_number"], stored_config(data["config"]), data["params"], data.get("hparams") or {}
        )


def _points(data: dict[str, Any]) -> list[ResultPoint]:
    return [
        ResultPoint(
            number=t["number"],
            config=stored_config(t["config"]),
            values=tuple(t["values"]) if t.get("values") is not None else None,
            metrics=t.get("metrics") or {},
            hparams=t.get("hparams") or {},
            objective_values=t.get("objective_values"),
        )
        for t in data["trials"]
    ]


class AskedTrial:
    """A trial handed out by `Study.ask()`: report intermediate values, then tell the result.

    Leaving the `with` block by `TrialPruned` tells `pruned`; by any other exception tells
    `failed` with the exception as the reason (and re-raises); without a `tell` tells
    `failed` too, so no trial is left running forever.
    """

    def __init__(
        self, study: Study, number: int, config: TrialConfig | InferenceConfig, params: dict[str, Any], hparams: dict[str, Any] | None = None
    ) -> None:
        self.study = study
        self.number = number
        # the knobs: TrialConfig (learning_rate, micro_batch_size, ...), or for a kind:
        # inference space the serving config (InferenceConfig: max_batch_size, serving_precision, ...)
        self.config = config
        self.params = params  # every value the sampler drew, knobs and hyperparameters, types kept
        self.hparams = dict(hparams or {})  # your own hyperparameters alone (the space's hparams:)
        self.told = False

    def __enter__(self) -> AskedTrial:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if self.told:
            return False
        if exc_type is not None and issubclass(exc_type, TrialPruned):
            self.tell(status="pruned", reason="pruned by the service's pruner")
            return True
        if exc is not None:
            self.tell(status="failed", reason=f"{type(exc).__name__}: {exc}")
            return False
        self.tell(status="failed", reason="the with-block ended without tell()")
        return False

    def _path(self, action: str) -> str:
        return f"/studies/{self.study.name}/trials/{self.number}/{action}"

    def report(self, step: int, value: float) -> bool:
        """Send an intermediate value; True means the pruner says: stop this trial now."""
        return bool(self.study.client.request("POST", self._path("report"), json={"step": step, "value": value})["prune"])

    def heartbeat(self) -> None:
        """A sign of life without a value: the trial does not expire (the study's
        trial_timeout_s) while its job calls this or `report` more often than that."""
        self.study.client.request("POST", self._path("heartbeat"))

    def tell(
        self,
        values: list[float] | Mapping[str, float] | float | None = None,
        *,
        metrics: Mapping[str, float] | None = None,
        status: Literal["ok", "oom", "failed", "pruned", "infeasible"] = "ok",
        reason: str | None = None,
        telemetry: Mapping[str, Any] | None = None,
    ) -> str:
        """Send the final objective values (a number, a list in objective order, or a dict)."""
        if isinstance(values, (int, float)):
            values = [float(values)]
        body = {
            "values": dict(values) if isinstance(values, Mapping) else values,
            "status": status,
            "metrics": dict(metrics or {}),
            "telemetry": dict(telemetry or {}),
            "reason": reason,
        }
        data = self.study.client.request("POST", self._path("tell"), json=body)
        self.told = True
        return data["state"]
