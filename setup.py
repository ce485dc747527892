"""The one packaging step pyproject.toml cannot express: top-level data folders in the wheel.

`search_spaces/` (presets) and `alembic/` (migrations) stay at the repository root, where the
docs, the docker image and the alembic CLI expect them. A wheel only installs packages, so
build_py copies each folder into the package that reads it; tuner.bundled.bundled_dir finds
the copy in a wheel and the top-level folder in a source checkout or an editable install.
Everything else is configured in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# top-level folder -> its place inside the installed packages (keep in step with tuner.bundled's callers)
BUNDLED = {"search_spaces": "tuner/space/preset_files", "alembic": "api/db/migrations"}


class BuildPyWithBundledFolders(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads the folders in the checkout
        for source, target in BUNDLED.items():
            destination = Path(self.build_lib) / target
            shutil.rmtree(destination, ignore_errors=True)  # no stale files from an earlier build
            shutil.copytree(ROOT / source, destination, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithBundledFolders})
