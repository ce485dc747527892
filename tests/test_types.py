"""TrialConfig / TrialResult serialisation: exact, JSON-safe, and a true copy."""

from __future__ import annotations

import dataclasses
import json
import math

from tuner.types import TrialConfig, TrialResult, TrialStatus


def test_config_to_dict_is_every_knob_and_round_trips() -> None:
    config = TrialConfig(micro_batch_size=24, precision="bf16", learning_rate=3e-4, world_size=2, sharding_stage=3)
    assert config.to_dict() == dataclasses.asdict(config)
    assert TrialConfig.from_dict(config.to_dict()) == config


def test_result_to_dict_is_strict_json_and_a_copy() -> None:
    telemetry = {"gpu": {"util": [1.0, math.nan]}, "ok": True}
    result = TrialResult(
        status=TrialStatus.OK,
        items_per_s=math.inf,
        loss_curve=(2.0, math.nan, 1.5),
        notes=("tf32 is a no-op on CPU",),
        metrics={"comm_share": 0.25, "bad": -math.inf},
        telemetry=telemetry,
    )
    data = result.to_dict()
    json.dumps(data, allow_nan=False)  # PostgreSQL json rejects NaN/Infinity
    assert data["status"] == "ok"
    assert data["items_per_s"] is None and data["metrics"] == {"comm_share": 0.25, "bad": None}
    assert data["loss_curve"] == [2.0, None, 1.5] and data["notes"] == ["tf32 is a no-op on CPU"]
    assert data["telemetry"] == {"gpu": {"util": [1.0, None]}, "ok": True}
    data["telemetry"]["gpu"]["util"].append(3.0)  # a copy: the result itself is unchanged
    assert len(telemetry["gpu"]["util"]) == 2 and len(result.telemetry["gpu"]["util"]) == 2
    back = TrialResult.from_dict(data)
    assert back.status is TrialStatus.OK and back.loss_curve == (2.0, None, 1.5)


@dataclasses.dataclass(frozen=True)
class _Peak:
    device: int
    bytes_used: float
    samples: tuple[float, ...]


def test_result_to_dict_turns_nested_dataclasses_into_dicts() -> None:
    data = TrialResult(status=TrialStatus.OK, telemetry={"peaks": [_Peak(0, math.nan, (1.0, 2.0))]}).to_dict()
    assert data["telemetry"]["peaks"] == [{"device": 0, "bytes_used": None, "samples": [1.0, 2.0]}]
    json.dumps(data, allow_nan=False)
