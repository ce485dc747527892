"""Search spaces: which knobs a study tunes, over what values, and when each applies.

`SearchSpace` is the validated, frozen space; `load_space` reads one from a dict, a
YAML/JSON file or a preset name, `load_preset` only from the shipped presets (safe for
names from untrusted input). Modules: `search_space` (the type), `params`/`ranges`
(parameter kinds), `conditions` (`when:`), `schema` (a parameter's file form),
`validation` (checks across parameters), `files` (YAML/JSON), `presets` (the shipped
spaces).
"""

from tuner.space.conditions import Clause, Condition
from tuner.space.params import BoolParam, CategoricalParam, FixedParam, ParamSpec
from tuner.space.presets import PRESET_DIR, list_presets, preset_path
from tuner.space.ranges import FloatParam, IntParam
from tuner.space.search_space import SearchSpace, load_preset, load_space

__all__ = [
    "PRESET_DIR",
    "BoolParam",
    "CategoricalParam",
    "Clause",
    "Condition",
    "FixedParam",
    "FloatParam",
    "IntParam",
    "ParamSpec",
    "SearchSpace",
    "list_presets",
    "load_preset",
    "load_space",
    "preset_path",
]
