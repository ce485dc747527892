"""Preset search spaces shipped in `search_spaces/` at the repository root (beside `tuner/`).

A wheel carries them as package data (`tuner/space/preset_files`, see tuner.bundled); a
source checkout or an editable install reads the top-level folder itself.

A preset is addressed by its file stem (`gpt_tiny_system`); `-` and `_` are interchangeable
so the space's own name (`gpt-tiny-system`) works too. Names never become paths outside
that folder, so a service may pass names from untrusted input to `load_preset`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tuner.bundled import bundled_dir
from tuner.errors import FieldProblem, SearchSpaceError

PRESET_DIR: Path = bundled_dir("tuner.space", "preset_files", "search_spaces")
_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def list_presets() -> list[str]:
    """Preset names (file stems), sorted."""
    if not PRESET_DIR.is_dir():
        return []
    return sorted({p.stem for p in PRESET_DIR.iterdir() if p.suffix in _SUFFIXES and p.is_file()})


def preset_path(name: str) -> Path:
    """The file of preset `name`; a SearchSpaceError naming the available presets otherwise."""
    stem = name
    for suffix in _SUFFIXES:
        if isinstance(name, str) and name.endswith(suffix):
            stem = name[: -len(suffix)]
    if isinstance(stem, str) and _NAME_RE.match(stem):
        for candidate in dict.fromkeys((stem, stem.replace("-", "_"))):
            for suffix in _SUFFIXES:
                path = PRESET_DIR / f"{candidate}{suffix}"
                if path.is_file():
                    return path
    available = list_presets()
    raise SearchSpaceError(
        FieldProblem(
            "space",
            name,
            "is not a preset search space",
            "use one of: "
            + (", ".join(available) or f"(none found in {PRESET_DIR})")
            + ", or a path to a .yaml/.json file",
        )
    )
