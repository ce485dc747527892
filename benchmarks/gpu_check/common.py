"""What every step of the GPU check shares: its context, its result record, helpers."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
SPACES = REPO / "search_spaces"


@dataclass(frozen=True)
class Context:
    """What the orchestrator hands each step (as JSON on the command line)."""

    out: str
    device: str  # "cuda" | "cpu"
    quick: bool

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def trial_device(self) -> str:
        return "cuda:0" if self.gpu else "cpu"

    @property
    def out_path(self) -> Path:
        return Path(self.out)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Context:
        return cls(**json.loads(text))


@dataclass
class StepRecord:
    """One step's outcome; `status` is derived from errors and checks unless skipped."""

    name: str
    figures: dict[str, Any] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skip_reason: str | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        return bool(ok)

    @property
    def status(self) -> str:
        if self.skip_reason is not None:
            return "skipped"
        if self.errors or any(not c["ok"] for c in self.checks):
            return "failed"
        return "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return json_safe(data)


def json_safe(value: Any) -> Any:
    """NaN/inf become None so the summary is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def load_space(name: str) -> dict[str, Any]:
    return yaml.safe_load((SPACES / name).read_text())


def gpt_params(ctx: Context) -> dict[str, Any]:
    """The gpt shape of the run: GPT-2 small on a GPU, the README's tiny GPT on the CPU."""
    space = load_space("gpt_small_system.yaml" if ctx.gpu else "gpt_tiny_system.yaml")
    return {"dropout": 0.0, **space["workload_params"]}


def run_command(args: list[str], *, timeout_s: float, cwd: Path | None = None) -> dict[str, Any]:
    """Run a command; return rc, seconds and the tails of stdout/stderr (never raises on rc)."""
    began = time.perf_counter()
    try:
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=child_env()
        )
    except subprocess.TimeoutExpired as exc:
        return {
            "rc": None,
            "timed_out": True,
            "seconds": time.perf_counter() - began,
            "stdout": _text(exc.stdout),
            "stderr": _text(exc.stderr)[-4000:],
        }
    return {
        "rc": proc.returncode,
        "timed_out": False,
        "seconds": time.perf_counter() - began,
        "stdout": proc.stdout,
        "stderr": proc.stderr[-4000:],
    }


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def tuner_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner", *args]


def nvidia_smi_gpus() -> list[dict[str, str]] | None:
    """index, uuid, name and memory of each GPU as nvidia-smi lists them (None: no tool)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        out = subprocess.run(
            [tool, "--query-gpu=index,uuid,name,memory.total,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 5:
            rows.append(
                dict(
                    zip(("index", "uuid", "name", "memory_total_mib", "memory_used_mib"), parts, strict=False)
                )
            )
    return rows


def nvml_used_bytes(index: int = 0) -> int | None:
    """Memory in use on NVML's GPU `index`, all processes (no torch, no CUDA context)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index)).used)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def read_step(ctx: Context, name: str) -> dict[str, Any] | None:
    path = ctx.out_path / "steps" / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def find_key(data: Any, needle: str) -> Any:
    """The first value anywhere inside `data` under a key containing `needle`."""
    if isinstance(data, dict):
        for key, value in data.items():
            if needle in str(key).lower() and not isinstance(value, (dict, list)):
                return value
        for value in data.values():
            found = find_key(value, needle)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = find_key(value, needle)
            if found is not None:
                return found
    return None


def finite(values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
