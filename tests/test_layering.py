"""Import rules of DESIGN.md, checked on the source (ast), plus a fast CLI start-up.

- `tuner` never imports `api`, fastapi, or SQLAlchemy's ORM (the service's own CLI
  commands live in api/cli and reach `tuner` through an entry point);
- pynvml only in the probe (hardware/probe.py) and the NVML sampler (hardware/telemetry.py);
- torch only in tuner/trial/ and the workload model modules (`*_model.py` and helpers);
- optuna / ray only in the study loop, samplers, storage/results helpers, executors,
  replay strategies, and lazily (inside functions) in the space package;
- `import tuner.cli.main` loads none of torch, optuna, ray;
- `api` never imports optuna, at module level or in a function: it reaches Optuna only
  through tuner functions;
- a private Optuna name (`optuna.x._y` modules, `._storage`/`._study_id`/`._trial_id`/
  `._backend` and the other private members listed below) appears only in
  tuner/storage/optuna_private.py, where tests/test_optuna_private.py checks each one.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNER = ROOT / "tuner"
API = ROOT / "api"
OPTUNA_PRIVATE = TUNER / "storage" / "optuna_private.py"

TORCH_ALLOWED = (
    "trial/",
    "workloads/gpt_model.py",
    "workloads/recsys_model.py",
    "workloads/text_corpus.py",
    # the serving engine's torch modules (prepare, accuracy, trial, placement); its pure modules import none
    "inference/prepare.py",
    "inference/accuracy.py",
    "inference/trial.py",
    "inference/placement.py",
    "inference/timing.py",
)
OPTUNA_ALLOWED = ("study/", "storage/", "replay/strategies.py", "replay/curve_strategies.py", "executors/", "asktell/")
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


def api_files() -> list[tuple[str, Path]]:
    return [(p.relative_to(ROOT).as_posix(), p) for p in sorted(API.rglob("*.py"))]


def every_import(path: Path) -> list[str]:
    """Every module `path` imports anywhere: module level, functions, TYPE_CHECKING blocks."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_api_never_imports_optuna():
    offenders = [(rel, mod) for rel, path in api_files() for mod in every_import(path) if root(mod) == "optuna"]
    assert offenders == [], "api reaches Optuna only through tuner functions (DESIGN.md)"


#: Private members of Optuna objects tuner relies on; read only in OPTUNA_PRIVATE.
PRIVATE_OPTUNA_ATTRS = frozenset(
    {
        "_storage",
        "_study_id",
        "_trial_id",
        "_backend",
        "_set_trial_attr_without_commit",
        "_get_stale_trial_ids",
        "_log_ndtr",
        "_tell_with_warning",
        "_truncnorm",
    }
)


def private_optuna_uses(source: str, filename: str = "<source>") -> list[str]:
    """Where `source` touches a private Optuna name: an import from or of a private Optuna
    module or name, a `optuna.<...>._x` attribute path, a read of one of
    PRIVATE_OPTUNA_ATTRS on anything but `self`/`cls` (our own classes keep such names
    on themselves), or a getattr/hasattr/setattr with one of them as a string."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.module and root(node.module) == "optuna" and node.level == 0:
            parts = node.module.split(".") + [alias.name for alias in node.names]
            if any(part.startswith("_") for part in parts):
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if root(alias.name) == "optuna" and any(p.startswith("_") for p in alias.name.split(".")):
                    found.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.Attribute):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if (isinstance(value, ast.Name) and value.id == "optuna" and any(a.startswith("_") for a in chain)) or (node.attr in PRIVATE_OPTUNA_ATTRS and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{where}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr", "setattr"):
            names = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            if names and names[0] in PRIVATE_OPTUNA_ATTRS:
                found.append(f"{where}: {ast.unparse(node)}")
    return found


def test_private_optuna_names_only_in_optuna_private():
    offenders = []
    for rel, path in [(f"tuner/{r}", p) for r, p in tuner_files()] + api_files():
        if path == OPTUNA_PRIVATE:
            continue
        offenders += private_optuna_uses(path.read_text(), rel)
    assert offenders == [], "use the typed accessors of tuner/storage/optuna_private.py"


def test_the_private_name_check_sees_each_kind_of_use():
    # Each line alone must be caught: the check above is only as good as this detector.
    for line in (
        "from optuna.study._tell import _tell_with_warning",
        "from optuna.storages import _rdb",
        "import optuna.storages._rdb.models",
        "x = optuna.samplers._tpe._truncnorm",
        "sid = study._study_id",
        "tid = trial._trial_id",
        "s = self.memory._storage",
        "b = getattr(storage, '_backend', storage)",
    ):
        assert private_optuna_uses(line), line
    assert private_optuna_uses("self._storage = storage\nx = cls._backend") == []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> list[str]:
    """Modules `path` may import when it runs (module level and lazy; TYPE_CHECKING blocks
    never run), with `from a import b` giving `a.b` too, in case b is a module."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend([child.module, *(f"{child.module}.{alias.name}" for alias in child.names)])
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the tuner/api modules it imports (lazy imports too, TYPE_CHECKING not),
    plus the packages whose __init__ such an import runs first."""
    paths = {module_name(p): p for p in sorted(TUNER.rglob("*.py")) + sorted(API.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in paths}
    for mod, path in paths.items():
        for target in runtime_imports(path):
            while target and target not in paths:
                target = target.rpartition(".")[0]
            while target and target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
                target = target.rpartition(".")[0]  # importing a.b.c runs a.b's __init__ first
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles_in_tuner_or_api():
    assert cycles(import_graph()) == [], "break the cycle: move the shared type down a layer (core types)"


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
