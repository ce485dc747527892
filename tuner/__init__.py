"""tuner: find the fastest, best training configuration for a PyTorch model on real hardware.

Kept import-light: torch, optuna and ray load only when a trial or study needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
