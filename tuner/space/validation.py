"""Checks across the parameters of a search space, dependency order, and condition pruning.

A parameter checks itself when built (`tuner.space.params`); what needs the whole space
lives here: header fields, duplicate names, what a condition refers to, cycles.
"""

from __future__ import annotations

import difflib
import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from tuner.errors import FieldProblem
from tuner.inference.knobs import INFERENCE_KNOBS
from tuner.knobs import FREE_ALL, KNOBS, QUALITY_KNOBS
from tuner.names import STUDY_NAME_RE
from tuner.space.conditions import ORDER_OPS, Clause, Condition
from tuner.space.params import ParamSpec, unknown_knob_fix

# Same rule as tuner.workloads' registry names; only the format is checked here because
# plug-in workloads may be registered after the space is loaded.
WORKLOAD_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def header_problems(name: Any, description: Any, workload: Any, workload_params: Any) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    if name is None:
        problems.append(
            FieldProblem("name", None, "is missing", "add name: my-space (it is used in study names)")
        )
    elif not isinstance(name, str) or not STUDY_NAME_RE.match(name):
        problems.append(
            FieldProblem(
                "name",
                name,
                "is not a valid space name (it becomes part of study names)",
                "use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit",
            )
        )
    if not isinstance(description, str):
        problems.append(FieldProblem("description", description, "must be text", 'write description: "..."'))
    if workload is not None and (not isinstance(workload, str) or not WORKLOAD_NAME_RE.match(workload)):
        problems.append(
            FieldProblem(
                "workload",
                workload,
                "is not a workload name",
                "use a registered name such as gpt (see `tuner workloads`)",
            )
        )
    if not isinstance(workload_params, Mapping) or not all(isinstance(k, str) for k in workload_params):
        problems.append(
            FieldProblem(
                "workload_params",
                workload_params,
                "must be a mapping of name -> value",
                "write e.g. {layers: 2, d_model: 64}",
            )
        )
    return problems


def free_knobs_problems(free_knobs: Any, field: str = "free_knobs") -> list[FieldProblem]:
    """Problems of a `free_knobs` value: `all`, or a list of names from QUALITY_KNOBS."""
    names = ", ".join(QUALITY_KNOBS)
    if not isinstance(free_knobs, (list, tuple)):
        return [
            FieldProblem(field, free_knobs, "must be all or a list of knob names", f"write {field}: all, or a list of: {names}")
        ]
    problems: list[FieldProblem] = []
    for i, name in enumerate(free_knobs):
        if name == FREE_ALL or name in QUALITY_KNOBS:
            continue
        guess = difflib.get_close_matches(str(name), QUALITY_KNOBS, n=1, cutoff=0.5)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        problems.append(
            FieldProblem(
                f"{field}[{i}]",
                name,
                "is not a knob a throughput study holds",
                f"{hint}use all, or some of: {names}",
            )
        )
    return problems


def params_problems(
    params: Sequence[Any],
    *,
    broken: Iterable[str] = (),
    broken_conditions: Mapping[str, Condition] | None = None,
) -> list[FieldProblem]:
    """Problems across parameters.

    `broken` names params that failed to build (their own problems are reported already);
    `broken_conditions` are their conditions, still checked against the rest of the space.
    """
    broken = set(broken)
    problems: list[FieldProblem] = []
    if not params and not broken:
        problems.append(
            FieldProblem(
                "params",
                {},
                "is empty",
                "add at least one knob, e.g. micro_batch_size: {type: int, low: 1, high: 64}",
            )
        )
    by_name: dict[str, ParamSpec] = {}
    for param in params:
        if not isinstance(param, ParamSpec):
            problems.append(
                FieldProblem("params", param, "is not a parameter", "use FloatParam, IntParam, ... objects")
            )
        elif param.name in by_name:
            first = by_name[param.name]
            where = f" (under {first.section} and {param.section})" if first.section != param.section else ""
            problems.append(
                FieldProblem(
                    param.field,
                    param.name,
                    f"is defined twice{where}",
                    "keep one definition: knobs under params, your own hyperparameters under hparams",
                )
            )
        else:
            by_name[param.name] = param
    conditions = {p.name: p.when for p in by_name.values() if p.when is not None}
    conditions.update(broken_conditions or {})
    for name, when in conditions.items():
        base = by_name[name].field if name in by_name else f"params.{name}"
        problems += _condition_problems(name, when, by_name, broken, base)
    for cycle in find_cycles(by_name.values()):
        problems.append(
            FieldProblem(
                f"params.{cycle[0]}.when",
                " -> ".join([*cycle, cycle[0]]),
                "conditions form a cycle, so none of these can ever become active",
                "a parameter may only depend on parameters that do not depend on it; remove one of these conditions",
            )
        )
    return problems


def _condition_problems(
    name: str, when: Condition, by_name: Mapping[str, ParamSpec], broken: set[str], base: str
) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    hparams = any(p.hparam for p in by_name.values())
    for ref in when.params:
        field = f"{base}.when.{ref}"
        target = by_name.get(ref)
        if ref == name:
            continue  # reported as a cycle
        if target is None:
            if ref in broken:
                continue
            if ref not in KNOBS and ref not in INFERENCE_KNOBS and hparams:
                problems.append(
                    FieldProblem(
                        field,
                        ref,
                        "is neither a knob nor a hyperparameter of this space",
                        _unknown_ref_fix(ref, by_name),
                    )
                )
            elif ref not in KNOBS and ref not in INFERENCE_KNOBS:
                problems.append(FieldProblem(field, ref, "is not a knob", unknown_knob_fix(ref)))
            else:
                problems.append(
                    FieldProblem(
                        field,
                        ref,
                        "is not a parameter of this space",
                        f"add {ref} under params (a fixed value is enough, e.g. {ref}: {(KNOBS.get(ref) or INFERENCE_KNOBS[ref]).default!r}) "
                        "or remove the condition",
                    )
                )
            continue
        clauses = [c for c in when.clauses if c.param == ref]
        clause_problems = [p for c in clauses if (p := _clause_problem(c, target, field))]
        problems += clause_problems
        values = target.finite_values()
        if not clause_problems and len(clauses) > 1 and values is not None:
            if not any(all(c.holds_for(v) for c in clauses) for v in values):
                problems.append(
                    FieldProblem(
                        field,
                        Condition(tuple(clauses)).to_dict()[ref],
                        f"can never hold all together: {ref} is {target.domain_text()}",
                        "loosen one of the bounds",
                    )
                )
    return problems


def _unknown_ref_fix(ref: str, by_name: Mapping[str, ParamSpec]) -> str:
    guess = difflib.get_close_matches(ref, [*by_name, *KNOBS], n=1, cutoff=0.6)
    hint = f"did you mean {guess[0]!r}? " if guess else ""
    return f"{hint}a condition may only read params and hparams of this space: define {ref} there, or remove the condition"


def _clause_problem(clause: Clause, target: ParamSpec, field: str) -> FieldProblem | None:
    domain = target.domain_text()
    if clause.op in ("==", "!="):
        if not target.contains(clause.value):
            return FieldProblem(
                field,
                clause.value,
                f"is not a legal value of {target.name}",
                f"use a value {target.name} can take: {domain}",
            )
        return None
    if clause.op == "in":
        bad = [v for v in clause.value if not target.contains(v)]
        if bad:
            return FieldProblem(
                field,
                bad,
                f"{'is' if len(bad) == 1 else 'are'} not legal values of {target.name}",
                f"use values of {domain}",
            )
        return None
    bounds = target.bounds()
    if bounds is None:
        return FieldProblem(
            field,
            {clause.op: clause.value},
            f"'{clause.op}' compares numbers but {target.name} is {domain}",
            "use == or a list of values",
        )
    values = target.finite_values()
    if values is not None:
        possible = any(clause.holds_for(v) for v in values)
    else:
        low, high = bounds
        possible = {">": high > clause.value, ">=": high >= clause.value, "<": low < clause.value}.get(
            clause.op, low <= clause.value
        )
    if not possible:
        return FieldProblem(
            field,
            {clause.op: clause.value},
            f"can never hold: {target.name} is {domain}",
            f"change the bound or the range of {target.name}",
        )
    return None


def _edges(params: Iterable[ParamSpec]) -> dict[str, list[str]]:
    params = list(params)
    names = {p.name for p in params}
    return {p.name: [r for r in (p.when.params if p.when else ()) if r in names] for p in params}


def find_cycles(params: Iterable[ParamSpec]) -> list[list[str]]:
    """Each dependency cycle once, starting at the parameter declared first."""
    edges = _edges(params)
    order = {name: i for i, name in enumerate(edges)}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for ref in edges[name]:
            if state.get(ref) == 1:
                cycle = path[path.index(ref) :]
                start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[start:] + cycle[:start]
                if frozenset(cycle) not in seen:
                    seen.add(frozenset(cycle))
                    cycles.append(cycle)
            elif ref not in state:
                visit(ref)
        path.pop()
        state[name] = 2

    for name in edges:
        if name not in state:
            visit(name)
    return cycles


def dependency_order(params: Sequence[ParamSpec]) -> tuple[ParamSpec, ...]:
    """Parameters so that each comes after those its condition reads; ties keep file order."""
    edges = _edges(params)
    index = {p.name: i for i, p in enumerate(params)}
    waiting = {name: len(set(refs)) for name, refs in edges.items()}
    dependants: dict[str, list[str]] = {name: [] for name in edges}
    for name, refs in edges.items():
        for ref in set(refs):
            dependants[ref].append(name)
    ready = [index[n] for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    ordered: list[ParamSpec] = []
    while ready:
        param = params[heapq.heappop(ready)]
        ordered.append(param)
        for dependant in dependants[param.name]:
            waiting[dependant] -= 1
            if waiting[dependant] == 0:
                heapq.heappush(ready, index[dependant])
    if len(ordered) != len(params):
        raise ValueError("conditions form a cycle")  # validation rejects such spaces first
    return tuple(ordered)


_NEVER = object()


def prune_conditions(params: Sequence[ParamSpec]) -> tuple[ParamSpec, ...]:
    """After a transformation (restrict, fix, remove), rewrite conditions to the new domains.

    A clause that can no longer hold makes its parameter unreachable, so the parameter goes
    (and, in turn, whatever depended on it). Values that left the domain leave `in` lists,
    and a `!=` on a value that left the domain is always true.
    """
    by_name = {p.name: p for p in params}
    changed = True
    while changed:
        changed = False
        for name, param in list(by_name.items()):
            if param.when is None:
                continue
            when = _simplify(param.when, by_name)
            if when is _NEVER:
                del by_name[name]
                changed = True
            elif when != param.when:
                by_name[name] = replace(param, when=when)  # type: ignore[type-var]
                changed = True
    return tuple(by_name[p.name] for p in params if p.name in by_name)


def _simplify(condition: Condition, by_name: Mapping[str, ParamSpec]) -> Any:
    kept: list[Clause] = []
    for clause in condition.clauses:
        target = by_name.get(clause.param)
        if target is None:
            return _NEVER
        values = target.finite_values()
        if clause.op == "==" and not target.contains(clause.value):
            return _NEVER
        if clause.op == "in":
            inside = tuple(v for v in clause.value if target.contains(v))
            if not inside:
                return _NEVER
            clause = Clause(clause.param, "in", inside)
        if clause.op == "!=" and not target.contains(clause.value):
            # Always true while the target is active; keep only that "active" part.
            others = [c for c in condition.clauses if c.param == clause.param and c is not clause]
            if others or target.when is None:
                continue
            clause = (
                Clause(clause.param, "in", values)
                if values is not None
                else Clause(clause.param, ">=", target.bounds()[0])
            )  # type: ignore[index]
        if clause.op in ORDER_OPS:
            if values is not None and not any(clause.holds_for(v) for v in values):
                return _NEVER
            bounds = target.bounds()
            if values is None and bounds is not None and _clause_problem(clause, target, "") is not None:
                return _NEVER
        kept.append(clause)
    if not kept:
        return None
    return Condition(tuple(kept))
