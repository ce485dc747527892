"""Import rules of DESIGN.md, checked on the source (ast), plus a fast CLI start-up.

- `tuner` never imports `api`, fastapi, or SQLAlchemy's ORM (the service's own CLI
  commands live in api/cli and reach `tuner` through an entry point);
- pynvml only in the probe (hardware/probe.py) and the NVML sampler (hardware/telemetry.py);
- torch only in tuner/trial/ and the workload model modules (`*_model.py` and helpers);
- optuna / ray only in the study loop, samplers, storage/results helpers, executors,
  replay strategies, and lazily (inside functions) in the space package;
- `import tuner.cli.main` loads none of torch, optuna, ray.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

TUNER = Path(__file__).resolve().parents[1] / "tuner"

TORCH_ALLOWED = ("trial/", "workloads/gpt_model.py", "workloads/recsys_model.py", "workloads/text_corpus.py")
OPTUNA_ALLOWED = ("study/", "storage/", "replay/strategies.py", "executors/")
LAZY_OPTUNA_ALLOWED = ("space/",)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at_module_level) for every import in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((alias.name, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, top))
            nested = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # typing-only imports never run
            visit(child, nested)

    visit(tree, True)
    return found


def tuner_files() -> list[tuple[str, Path]]:
    return [(p.relative_to(TUNER).as_posix(), p) for p in sorted(TUNER.rglob("*.py"))]


def root(module: str) -> str:
    return module.split(".")[0]


# The CLI commands that start or administer the service are its entry points; they may
# import `api` inside their run() (never at module level, so `tuner --help` stays light).
def test_tuner_never_imports_the_service_or_orm():
    offenders = [
        (rel, mod)
        for rel, path in tuner_files()
        for mod, top in imports(path)
        if root(mod) in ("api", "fastapi", "uvicorn") or mod.startswith("sqlalchemy.orm")
    ]
    assert offenders == []


def test_torch_only_in_trial_and_model_modules():
    offenders = [
        (rel, mod)
        for rel, path in tuner_files()
        for mod, _ in imports(path)
        if root(mod) == "torch" and not rel.startswith(TORCH_ALLOWED) and not rel.endswith("_model.py")
    ]
    assert offenders == []


def test_optuna_and_ray_only_in_the_search_layer():
    offenders = []
    for rel, path in tuner_files():
        for mod, top in imports(path):
            if root(mod) not in ("optuna", "ray"):
                continue
            if rel.startswith(OPTUNA_ALLOWED) or (rel.startswith(LAZY_OPTUNA_ALLOWED) and not top):
                continue
            offenders.append((rel, mod, "module level" if top else "in a function"))
    assert offenders == []


def test_cli_startup_imports_nothing_heavy():
    code = (
        "import sys, json, time; t = time.perf_counter(); import tuner.cli.main as m; m.build_parser(); "
        "print(json.dumps({'heavy': sorted(n for n in ('torch', 'optuna', 'ray', 'sqlalchemy', 'fastapi') "
        "if n in sys.modules), 's': time.perf_counter() - t}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["heavy"] == []
    assert report["s"] < 2.0  # well under a second on an idle machine; slack for a busy CI box


def test_pynvml_only_in_the_probe_and_the_sampler():
    offenders = [
        (rel, mod)
        for rel, path in tuner_files()
        for mod, _top in imports(path)
        if root(mod) == "pynvml" and rel not in ("hardware/probe.py", "hardware/telemetry.py")
    ]
    assert offenders == []
