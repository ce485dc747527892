"""A distributed test workload that notes the NCCL variables each rank process sees.

Importable by rank processes (they unpickle the workload by its class), hence not inside
a test file. Used by tests/test_scale_out.py: the communication knobs (`nccl_algo`,
`nccl_proto`) must arrive in every rank's environment before its process group starts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from distributed_test_workloads import TinyStackWorkload

from tuner.types import TrialConfig
from tuner.workloads import register_workload


@register_workload
class EnvReportingWorkload(TinyStackWorkload):
    name = "dist_env_report"

    def build(self, params: Mapping[str, Any], config: TrialConfig, device: str, seed: int) -> Any:
        import torch.distributed as dist

        setup = super().build(params, config, device, seed)
        seen = " ".join(f"{k}={os.environ.get(k, '-')}" for k in ("NCCL_ALGO", "NCCL_PROTO"))
        setup.notes.append(f"rank env: rank={dist.get_rank()} {seen}")
        return setup
