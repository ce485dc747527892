"""Builds the `TrialRequest` a test hands to a runner or a workload.

The study resolves a workload's params once, when its spec is created; a test that
calls the runner directly plays that part here, so every call site need not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuner.trial_request import TrialRequest
from tuner.types import TrialBudget, TrialConfig
from tuner.workloads import Workload


def trial_request(
    workload: Workload,
    config: TrialConfig,
    params: Mapping[str, Any] | None = None,
    budget: TrialBudget | None = None,
    *,
    device: str = "auto",
    seed: int = 0,
    peak_flops: float | None = None,
    trial_number: int = 0,
) -> TrialRequest:
    """A request for `workload` with `params` resolved (defaults filled, checked)."""
    return TrialRequest(
        trial_number=trial_number,
        workload=workload.name,
        params=workload.resolve_params(params or {}),
        config=config,
        budget=budget or TrialBudget(),
        seed=seed,
        device=device,
        peak_flops=peak_flops,
    )
