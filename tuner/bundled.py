"""Data folders shipped beside the code: one rule for where they are, installed or not.

`search_spaces/` and `alembic/` live at the repository root (the documented layout). A wheel
cannot install top-level data folders, so setup.py copies them into the package that reads
them (`tuner/space/preset_files`, `api/db/migrations`). A source checkout or an editable
install has no such copy and reads the folder at the repository root instead.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled_dir(package: str, installed: str, checkout: str) -> Path:
    """`package`'s data folder `installed` in a wheel, else the checkout's top-level `checkout`.

    A Path (not a Traversable) because its readers need real files: Alembic loads its
    migrations by file name. Wheels install as plain files, so this holds wherever pip installs.
    """
    in_package = resources.files(package) / installed
    if in_package.is_dir():
        return Path(str(in_package))
    top_level = resources.files(package.partition(".")[0])
    return Path(str(top_level)).parent / checkout
