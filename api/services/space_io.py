"""Reading search spaces from payloads (object or YAML/JSON text)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tuner.errors import FieldProblem, SearchSpaceError

if TYPE_CHECKING:
    from tuner.space.search_space import SearchSpace

#: Largest YAML text accepted for a space; the body limit bounds it too, this bounds parsing.
MAX_SPACE_TEXT = 256 * 1024


def space_data(raw: dict[str, Any] | str, field: str = "space") -> dict[str, Any]:
    """The space as a dict; YAML text is parsed with `safe_load` (JSON is YAML)."""
    if isinstance(raw, dict):
        return raw
    if len(raw) > MAX_SPACE_TEXT:
        raise SearchSpaceError(
            FieldProblem(field, f"<{len(raw)} characters>", "is too long", f"keep it under {MAX_SPACE_TEXT} characters")
        )
    from tuner.space.files import parse_text

    preset = _preset_data(raw, field)
    if preset is not None:
        return preset
    # YAML is a superset of JSON; tuner's loader also rejects duplicate keys.
    data = parse_text(raw, "yaml", field)
    if not isinstance(data, dict):
        from tuner.space.presets import list_presets

        raise SearchSpaceError(
            FieldProblem(
                field,
                raw[:200],
                "is neither a preset name nor a search space (a mapping with name and params)",
                f"name a shipped preset ({', '.join(list_presets())}) or send a space, e.g. {SPACE_EXAMPLE}",
            )
        )
    return data


#: A complete, valid space in YAML flow style: the fix of a space that is not a mapping
#: quotes it, and tests/test_space_by_name.py loads it as written.
SPACE_EXAMPLE = (
    "{name: mine, params: {micro_batch_size: {type: int, low: 1, high: 64, log: true}, "
    "learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}}}"
)


def _preset_data(raw: str, field: str) -> dict[str, Any] | None:
    """A shipped preset's space when `raw` is exactly a preset's name (`gpt_tiny_system`).

    Only names, never paths: `preset_path` accepts nothing but a bare name and reads only
    the shipped presets' folder, so a request can never make the server open a file."""
    from tuner.space.files import parse_text
    from tuner.space.presets import list_presets, preset_path

    name = raw.strip()
    if name not in list_presets() and name.replace("-", "_") not in list_presets():
        return None
    path = preset_path(name)
    data = parse_text(path.read_text(), "json" if path.suffix == ".json" else "yaml", field)
    return data if isinstance(data, dict) else None


def parse_space(raw: dict[str, Any] | str, field: str = "space") -> SearchSpace:
    from tuner.space.search_space import SearchSpace

    return SearchSpace.from_dict(space_data(raw, field), source=field)

