"""Export a tuned serving config: JSON/YAML (`InferenceConfig.to_dict()` plus `kind:
inference`), or a PyTorch snippet that builds the served model (fused, quantized,
compiled) and states the batcher's settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.errors import FieldProblem, ValidationError
from tuner.inference.config import InferenceConfig


def render_inference(config: InferenceConfig, fmt: str, meta: dict[str, Any] | None = None) -> str:
    data = {"kind": "inference", **config.to_dict()}
    header = [f"{k}: {v}" for k, v in (meta or {}).items() if v is not None]
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False)
    if fmt == "torch":
        return serving_snippet(config, header)
    raise ValidationError(FieldProblem("format", fmt, "is not an export format", "use json, yaml or torch"))


def write_inference_config(
    path: str | Path, config: InferenceConfig, workload: str, result: Any | None = None
) -> Path:
    from tuner.export import format_for_path

    path = Path(path)
    meta = {"workload": workload}
    if result is not None and getattr(result, "ok", False):
        meta["measured"] = (
            f"{result.qps:,.0f} QPS at p99 {result.p99_ms:.1f} ms (SLO {result.slo_p99_ms:g} ms)"
        )
    path.write_text(render_inference(config, format_for_path(path), meta))
    return path


def serving_snippet(config: InferenceConfig, header: list[str] | None = None) -> str:
    lines = [
        '"""Serving config tuned by tuner.',
        *(header or []),
        '"""',
        "import torch",
        "from torch import nn",
        "",
    ]
    lines += [
        "# Batcher settings (e.g. Triton's dynamic_batching / instance_group, or your own queue):",
        f"MAX_BATCH_SIZE = {config.max_batch_size}",
        f"BATCH_WINDOW_MS = {config.batch_window_ms:g}  # max wait before a partial batch runs",
        f"PADDING = {config.padding!r}  # variable-length inputs",
        f"INSTANCES = {config.instances}  # model copies serving one queue",
        f"THREADS_PER_INSTANCE = {config.threads_per_instance}  # 0: torch's default",
        "",
        "",
        "def build_served_model(model: nn.Module, device: str = \"cpu\") -> nn.Module:",
        "    # device: where it serves (\"cuda\" for a config tuned on a GPU; inputs go there too)",
        "    model = model.eval()",
    ]
    if config.fusion:
        lines += [
            "    # Fold each Conv2d -> BatchNorm2d (-> ReLU) run inside nn.Sequential into one op.",
            "    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:",
            "        names, groups, i = list(seq._modules), [], 0",
            "        while i < len(names) - 1:",
            "            a, b = seq._modules[names[i]], seq._modules[names[i + 1]]",
            "            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):",
            "                group = names[i : i + 2]",
            "                if i + 2 < len(names) and isinstance(seq._modules[names[i + 2]], nn.ReLU):",
            "                    group = names[i : i + 3]",
            "                groups.append(group)",
            "                i += len(group)",
            "            else:",
            "                i += 1",
            "        if groups:",
            "            torch.ao.quantization.fuse_modules(seq, groups, inplace=True)",
            "    # A module with a fused serving form (tuner's DLRM: its tables in one lookup) is",
            "    # replaced by it, as tuner.inference.prepare.fuse_workload_operators does.",
            "    model = _fused_forms(model)",
        ]
    # fusion on the host copy, then the device, then the dtype or int8 (as tuner.inference.prepare)
    lines += ["    model = model.to(device)"]
    if config.serving_precision in ("bf16", "fp16"):
        dtype = "torch.bfloat16" if config.serving_precision == "bf16" else "torch.float16"
        lines += [
            f"    model = model.to({dtype})  # run forwards under torch.autocast(device, {dtype})"
        ]
    elif config.int8 and config.int8_backend == "torchao":
        recipe = (
            "Int8DynamicActivationInt8WeightConfig"
            if config.serving_precision == "int8_dynamic"
            else "Int8WeightOnlyConfig"
        )
        lines += [
            f"    from torchao.quantization import {recipe}, quantize_",
            "",
            f"    quantize_(model, {recipe}())",
        ]
    elif config.int8:
        lines += ["    model = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)"]
    if config.compile_mode != "off":
        lines += [f"    model = torch.compile(model, mode={config.compile_mode!r}, dynamic=True)"]
    lines += ["    return model", ""]
    if config.fusion:
        compiled = config.compile_mode != "off"
        lines += [
            "",
            "def _fused_forms(module: nn.Module) -> nn.Module:",
            "    hook = getattr(module, \"fused_for_serving\", None)",
            "    if callable(hook):",
            f"        return hook(compiled={compiled})[0]",
            "    for name, child in list(module.named_children()):",
            "        setattr(module, name, _fused_forms(child))",
            "    return module",
            "",
        ]
    lines += ["", 'if __name__ == "__main__":']
    lines += [
        "    demo = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 1))",
        "    served = build_served_model(demo)",
        "    if THREADS_PER_INSTANCE:",
        "        torch.set_num_threads(THREADS_PER_INSTANCE)",
        "    with torch.inference_mode():",
        "        print(served(torch.randn(MAX_BATCH_SIZE, 64)).shape)",
        "",
    ]
    return "\n".join(lines)
