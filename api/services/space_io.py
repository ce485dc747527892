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

    # YAML is a superset of JSON; tuner's loader also rejects duplicate keys.
    data = parse_text(raw, "yaml", field)
    if not isinstance(data, dict):
        raise SearchSpaceError(
            FieldProblem(field, raw[:200], "is not a mapping of knob names to parameters", "e.g. 'micro_batch_size: {int: [1, 64]}'")
        )
    return data


def parse_space(raw: dict[str, Any] | str, field: str = "space") -> SearchSpace:
    from tuner.space.search_space import SearchSpace

    return SearchSpace.from_dict(space_data(raw, field), source=field)

