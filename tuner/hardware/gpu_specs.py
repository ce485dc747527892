"""Datasheet facts of known NVIDIA GPUs: peak TFLOP/s, memory and PCIe bandwidth,
architectures, CUDA cores per SM. Tables and exact-name lookups only (no probing): the
profile (`tuner.hardware.profile`) falls back to them when nothing was measured.
"""

from __future__ import annotations

import re

# Dense (no 2:4 sparsity) peak TFLOP/s per device and memory bandwidth (bytes/s) of
# known GPUs, from NVIDIA's datasheets; where a datasheet gives "X | 2X*", X (dense) is
# used. One entry per model *variant*: the PCIe and NVL parts of a chip have lower clocks
# and power, and often other memory, than its SXM part (H100 PCIe: 756 vs 989 TFLOP/s
# bf16, 2.0 vs 3.35 TB/s), so a substring match ("H100" in "H100 PCIe") is wrong by
# 25-65 %. Names are matched whole by `_GPU_MODELS` below; a GPU not listed there gets
# no datasheet figure (the probe then estimates from NVML clocks, or measures).
_HOPPER_SXM = {"bf16": 989.5, "fp16": 989.5, "tf32": 494.5, "fp32": 67.0, "fp8": 1979.0}
_HOPPER_NVL = {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0, "fp8": 1670.5}
_A100 = {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}
KNOWN_GPUS: dict[str, dict[str, float]] = {
    # H200 datasheet (SXM | NVL columns)
    "H200 SXM": {**_HOPPER_SXM, "bw": 4.8e12},
    "H200 NVL": {**_HOPPER_NVL, "bw": 4.8e12},
    # H100 datasheet (SXM | PCIe; NVL from the H100 NVL product brief, per GPU)
    "H100 SXM": {**_HOPPER_SXM, "bw": 3.35e12},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0, "fp8": 1513.0, "bw": 2.0e12},
    "H100 NVL": {**_HOPPER_NVL, "bw": 3.9e12},
    # GH200 datasheet: the Hopper GPU of the superchip has H100 SXM's compute; its HBM
    # (96 GB HBM3, 4 TB/s, or 144 GB HBM3e, 4.9 TB/s) is told apart by its size.
    "GH200 96GB HBM3": {**_HOPPER_SXM, "bw": 4.0e12},
    "GH200 144GB HBM3e": {**_HOPPER_SXM, "bw": 4.9e12},
    "GH200": dict(_HOPPER_SXM),  # memory size unknown: no bandwidth figure
    # A100 datasheet (80GB SXM 2,039 GB/s, 80GB PCIe 1,935 GB/s, 40GB 1,555 GB/s)
    "A100 SXM 80GB": {**_A100, "bw": 2.039e12},
    "A100 SXM 40GB": {**_A100, "bw": 1.555e12},
    "A100 PCIe 80GB": {**_A100, "bw": 1.935e12},
    "A100 PCIe 40GB": {**_A100, "bw": 1.555e12},
    # L40S, L40, L4, A10 datasheets
    "L40S": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6, "fp8": 733.0, "bw": 0.864e12},
    "L40": {"bf16": 181.05, "fp16": 181.05, "tf32": 90.5, "fp32": 90.5, "fp8": 362.0, "bw": 0.864e12},
    "L4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3, "fp8": 242.5, "bw": 0.3e12},
    "A10": {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2, "bw": 0.6e12},
    # V100 datasheet (SXM2 | PCIe), V100S datasheet; "fp16" is the tensor-core rate
    "V100 SXM2": {"fp16": 125.0, "fp32": 15.7, "bw": 0.9e12},
    "V100 PCIe": {"fp16": 112.0, "fp32": 14.0, "bw": 0.9e12},
    "V100S PCIe": {"fp16": 130.0, "fp32": 16.4, "bw": 1.134e12},
    # T4 datasheet (fp16 mixed precision)
    "T4": {"fp16": 65.0, "fp32": 8.1, "bw": 0.32e12},
}

# NVML names (after "NVIDIA "/"Tesla ") -> KNOWN_GPUS model, matched whole and without
# case. Seen in the wild: "NVIDIA H200", "NVIDIA H200 NVL", "NVIDIA H100 80GB HBM3",
# "NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA A100-SXM4-80GB",
# "NVIDIA A100 80GB PCIe", "NVIDIA A100-PCIE-40GB", "NVIDIA L40S", "NVIDIA L4",
# "Tesla V100-SXM2-16GB", "Tesla T4". "A10G" (AWS) and other unlisted parts match nothing.
_GPU_MODELS: tuple[tuple[str, str], ...] = (
    (r"H200(?:[- ]SXM\w*)?(?:[- ]\d+ ?GB)?(?: HBM3e)?", "H200 SXM"),
    (r"H200 NVL", "H200 NVL"),
    (r"H100(?:[- ]SXM\d?)?(?:[- ]\d+ ?GB)?(?: HBM3)?", "H100 SXM"),
    (r"H100(?:[- ]\d+ ?GB)?[- ]PCIe(?:[- ]\d+ ?GB)?", "H100 PCIe"),
    (r"H100 NVL", "H100 NVL"),
    (r"GH200(?: .*)?", "GH200"),
    (r"A100[- ]SXM4?[- ]80GB", "A100 SXM 80GB"),
    (r"A100[- ]SXM4?[- ]40GB", "A100 SXM 40GB"),
    (r"A100[- ](?:80GB[- ]PCIe|PCIe[- ]80GB)", "A100 PCIe 80GB"),
    (r"A100[- ](?:40GB[- ]PCIe|PCIe[- ]40GB)", "A100 PCIe 40GB"),
    (r"L40S", "L40S"),
    (r"L40", "L40"),
    (r"L4", "L4"),
    (r"A10", "A10"),
    (r"V100[- ]SXM2(?:[- ]\d+GB)?", "V100 SXM2"),
    (r"V100[- ]PCIe(?:[- ]\d+GB)?", "V100 PCIe"),
    (r"V100S[- ]PCIe(?:[- ]\d+GB)?", "V100S PCIe"),
    (r"T4", "T4"),
)
#: GH200 with more GPU memory than this has HBM3e (144 GB), else HBM3 (96 GB).
_GH200_HBM3E_ABOVE_BYTES = 120 * 10**9

ARCHITECTURES: dict[int, str] = {
    7: "Volta/Turing",
    8: "Ampere/Ada",
    9: "Hopper",
    10: "Blackwell",
    12: "Blackwell",
}

# NVML's architecture enum (nvmlDeviceGetArchitecture), finer than the CC major above:
# it tells Ampere (CC 8.0/8.6) from Ada (8.9).
NVML_ARCHITECTURES: dict[int, str] = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada",
    9: "Hopper",
    10: "Blackwell",
}

# CUDA cores per SM by compute capability, to derive the SM count from NVML's core count
# without importing torch (H200: 16896 cores / 128 = 132 SMs, as torch reports).
CUDA_CORES_PER_SM: dict[tuple[int, int], int] = {
    (6, 0): 64,
    (6, 1): 128,
    (7, 0): 64,
    (7, 2): 64,
    (7, 5): 64,
    (8, 0): 64,
    (8, 6): 128,
    (8, 7): 128,
    (8, 9): 128,
    (9, 0): 128,
    (10, 0): 128,
    (12, 0): 128,
}


# Usable bytes/s of ONE PCIe lane in ONE direction per link generation: the transfer
# rate less the line code (8b/10b for gen 1-2, 128b/130b for gen 3-5, 242/256 FLIT for
# gen 6). x16 gen5: 63.0 GB/s each way. Packet headers cost a further ~5-15 %, so a
# link never reaches this; it is the ceiling NVML's PCIe throughput is compared with.
PCIE_LANE_BYTES_PER_S: dict[int, float] = {
    1: 2.5e9 * 8 / 10 / 8,
    2: 5e9 * 8 / 10 / 8,
    3: 8e9 * 128 / 130 / 8,
    4: 16e9 * 128 / 130 / 8,
    5: 32e9 * 128 / 130 / 8,
    6: 64e9 * 242 / 256 / 8,
}


def pcie_peak_bytes_per_s(generation: int | None, width: int | None) -> float | None:
    """Peak bytes/s of a PCIe link in one direction (`PCIE_LANE_BYTES_PER_S` x lanes),
    None when the generation is unknown or a figure is missing."""
    if not isinstance(generation, int) or not isinstance(width, int) or width < 1:
        return None
    lane = PCIE_LANE_BYTES_PER_S.get(generation)
    return lane * width if lane is not None else None



def known_gpu_model(name: str | None, memory_total_bytes: int | None = None) -> str | None:
    """The KNOWN_GPUS entry of the GPU NVML calls `name`, or None when it is not listed.

    The whole name must match one model's pattern: "H100 PCIe" is not "H100 SXM" and
    "L40" is not "L4". `memory_total_bytes` tells the GH200's HBM3 and HBM3e parts apart.
    """
    if not name:
        return None
    bare = re.sub(r"^(?:NVIDIA|Tesla)\s+", "", name.strip(), flags=re.IGNORECASE)
    for pattern, model in _GPU_MODELS:
        if re.fullmatch(pattern, bare, flags=re.IGNORECASE):
            if model == "GH200" and memory_total_bytes:
                return "GH200 144GB HBM3e" if memory_total_bytes > _GH200_HBM3E_ABOVE_BYTES else "GH200 96GB HBM3"
            return model
    return None


def known_gpu_peaks(name: str | None, memory_total_bytes: int | None = None) -> dict[str, float]:
    """Datasheet peaks of the GPU NVML calls `name` ({} when it is not listed)."""
    model = known_gpu_model(name, memory_total_bytes)
    return dict(KNOWN_GPUS[model]) if model is not None else {}


def cuda_capabilities(cc: tuple[int, int] | None) -> dict[str, bool]:
    major_minor = (cc[0], cc[1]) if cc else (0, 0)
    return {
        "supports_bf16": major_minor >= (8, 0),
        "supports_tf32": major_minor >= (8, 0),
        "supports_fp8": major_minor >= (8, 9),
        "supports_flash_attention": major_minor >= (8, 0),
    }
