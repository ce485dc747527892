"""Where the shared H200 measurements are.

CI clones the repository into a fresh folder with a copy of shared/ beside it, so look
there first (`../shared` of the checkout), then at the team machines' /work/shared.
TUNER_SHARED_DATA overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path


def _h200_dir() -> Path:
    override = os.environ.get("TUNER_SHARED_DATA")
    if override:
        return Path(override) / "h200"
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data" / "h200"
    return beside_checkout if beside_checkout.is_dir() else Path("/work/shared/data/h200")


H200_DIR: Path = _h200_dir()
