"""Name rules shared by studies, spaces and the REST schemas (core: imports nothing of tuner)."""

from __future__ import annotations

import re

#: a study (or search space) name: safe in URLs, file names and SQL, 1-128 characters
STUDY_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
