"""Reading and writing search-space files (YAML or JSON, chosen by suffix).

Stricter than plain `yaml.safe_load` in two ways that bite people who write search spaces:
a key given twice is an error (PyYAML would silently keep the last one), and `1e-5` is a
number (YAML 1.1 reads an exponent without a dot as a string; YAML 1.2 and JSON do not).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tuner.errors import FieldProblem, SearchSpaceError

SUFFIXES: dict[str, str] = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}

_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core-schema floats, so 1e-5 and 3E4 are numbers as they are in JSON.
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


for _cls in (_Loader, _Dumper):
    # Resolvers are looked up by first character; this one is tried after the built-in ones.
    _cls.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))


def _mapping_without_duplicates(
    loader: _Loader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def file_format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise SearchSpaceError(
            FieldProblem(
                "path",
                str(path),
                f"has the suffix {path.suffix!r}",
                "name the file *.yaml, *.yml or *.json",
                str(path),
            )
        )
    return fmt


def read_document(path: Path) -> Any:
    """The parsed contents of a space file; every failure is a SearchSpaceError naming the file."""
    source = str(path)
    fmt = file_format(path)
    if not path.is_file():
        from tuner.space.presets import list_presets

        what = "is a directory" if path.is_dir() else "does not exist"
        raise SearchSpaceError(
            FieldProblem(
                "path",
                source,
                what,
                "give an existing .yaml/.json file, or a preset name: " + ", ".join(list_presets()),
                source,
            )
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchSpaceError(
            FieldProblem(
                "path",
                source,
                f"cannot be read: {exc}",
                "save it as UTF-8 text readable by this user",
                source,
            )
        ) from None
    return parse_text(text, fmt, source)


def parse_text(text: str, fmt: str, source: str | None) -> Any:
    lines = text.splitlines()
    try:
        data = (
            yaml.load(text, Loader=_Loader)
            if fmt == "yaml"
            else json.loads(text, object_pairs_hook=_json_object)
        )
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise SearchSpaceError(
            _syntax_problem("YAML", exc.problem or str(exc), line, mark and mark.column + 1, lines, source)
        ) from None
    except yaml.YAMLError as exc:
        raise SearchSpaceError(_syntax_problem("YAML", str(exc), None, None, lines, source)) from None
    except json.JSONDecodeError as exc:
        raise SearchSpaceError(
            _syntax_problem("JSON", exc.msg, exc.lineno, exc.colno, lines, source)
        ) from None
    except _DuplicateJsonKey as exc:
        raise SearchSpaceError(
            FieldProblem(
                "syntax", exc.key, "is a key given twice in one JSON object", "keep one of them", source
            )
        ) from None
    if data is None:
        raise SearchSpaceError(
            FieldProblem("syntax", "", "the file is empty", "write a mapping with name and params", source)
        )
    return data


def _syntax_problem(
    fmt: str, message: str, line: int | None, column: int | None, lines: list[str], source: str | None
) -> FieldProblem:
    where = f" at line {line}, column {column}" if line else ""
    text = lines[line - 1] if line and line <= len(lines) else ""
    # `>` and `<` start YAML block scalars, so an unquoted operator is the classic mistake.
    hint = (
        ' (quote condition operators: {">": 1})' if fmt == "YAML" and re.search(r"[{,]\s*[<>]", text) else ""
    )
    return FieldProblem(
        "syntax", text, f"is not valid {fmt}{where}: {message}", f"fix the {fmt} syntax{where}{hint}", source
    )


class _DuplicateJsonKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateJsonKey(key)
        out[key] = value
    return out


class _Flow(dict):  # type: ignore[type-arg]
    """A mapping written on one line, as people write a parameter: {type: int, low: 1, high: 8}."""


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


def write_document(path: Path, data: Any) -> None:
    """Write `data` (a space's `to_dict()`) as JSON or YAML, chosen by the suffix."""
    if file_format(path) == "json":
        text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    else:
        if isinstance(data, dict) and isinstance(data.get("params"), dict):
            params = {k: _Flow(v) if isinstance(v, dict) else v for k, v in data["params"].items()}
            data = {**data, "params": params}
        text = yaml.dump(
            data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, allow_unicode=True, width=120
        )
    path.write_text(text, encoding="utf-8")
