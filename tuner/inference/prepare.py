"""Turn the fp32 reference model into the served one: fusion, precision (bf16, int8), compile.

int8 prefers torchao's `quantize_` (Int8DynamicActivationInt8WeightConfig /
Int8WeightOnlyConfig): torch 2.13 deprecates `torch.ao.quantization`'s eager quantization in
its favour. `int8_backend: fbgemm` (or torchao missing) uses
`torch.ao.quantization.quantize_dynamic`, whose fbgemm kernels are faster on x86 CPUs
today; the result's notes say which library ran, so the tuner picks by measurement.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuner.inference.config import InferenceConfig
from tuner.inference.placement import OnDevice, new_stream
from tuner.inference.refusals import torchao_available

CAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class PreparedModel:
    module: nn.Module
    dtype: torch.dtype  # float inputs are cast to it
    notes: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    #: this instance's own CUDA stream on a GPU (None on the CPU)
    stream: Any = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The context every forward of this model runs in. On a GPU it returns only when
        the forward's kernels are done (its stream synchronised): a latency measured
        around it is the GPU's, not the time Python took to queue the work."""
        if self.device.type == "cuda":
            with (
                torch.inference_mode(),
                torch.cuda.stream(self.stream),
                torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32),
            ):
                yield
            self.stream.synchronize()
            return
        with torch.inference_mode():
            if self.dtype != torch.float32:
                # autocast casts float inputs (and ops that mix in fp32 buffers) to bf16
                with torch.autocast("cpu", dtype=self.dtype):
                    yield
            else:
                yield


def fuse_conv_bn_relu(model: nn.Module) -> int:
    """Fold every Conv2d -> BatchNorm2d (-> ReLU) run inside an nn.Sequential into one op
    (`torch.ao.quantization.fuse_modules`: the BN's scale and shift go into the conv's
    weights, the ReLU into a ConvReLU2d); returns how many runs were fused. Eval mode only."""
    fused = 0
    for sequential in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        groups = []
        i = 0
        while i < len(names) - 1:
            first, second = sequential._modules[names[i]], sequential._modules[names[i + 1]]
            if isinstance(first, nn.Conv2d) and isinstance(second, nn.BatchNorm2d):
                group = [names[i], names[i + 1]]
                if i + 2 < len(names) and isinstance(sequential._modules[names[i + 2]], nn.ReLU):
                    group.append(names[i + 2])
                groups.append(group)
                i += len(group)
            else:
                i += 1
        if groups:
            torch.ao.quantization.fuse_modules(sequential, groups, inplace=True)
            fused += len(groups)
    return fused


def fuse_workload_operators(model: nn.Module, *, compiled: bool) -> tuple[nn.Module, list[str]]:
    """Replace every module that offers a fused serving form (`fused_for_serving(compiled=)
    -> (module, note)`, e.g. the DLRM's table-batched embeddings) with that form; return
    the model (itself replaced when it offers one) and one note per fusion. `compiled`
    says whether torch.compile will run it: a form may differ for the compiled graph."""
    hook = getattr(model, "fused_for_serving", None)
    if callable(hook):
        fused, note = hook(compiled=compiled)
        return fused, [note]
    notes: list[str] = []
    for name, child in list(model.named_children()):
        fused, child_notes = fuse_workload_operators(child, compiled=compiled)
        if fused is not child:
            setattr(model, name, fused)
        notes += child_notes
    return model, notes


def _quantize_int8(model: nn.Module, config: InferenceConfig, notes: list[str]) -> nn.Module:
    if config.int8_backend == "torchao" and torchao_available():
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        recipe = (
            Int8DynamicActivationInt8WeightConfig()
            if config.serving_precision == "int8_dynamic"
            else Int8WeightOnlyConfig()
        )
        quantize_(model, recipe)
        notes.append(f"int8 by torchao quantize_({type(recipe).__name__})")
        return model
    if config.int8_backend == "torchao":
        notes.append("torchao is not installed: int8_dynamic by torch.ao.quantization.quantize_dynamic")
    else:
        notes.append("int8 by torch.ao.quantization.quantize_dynamic (fbgemm), as int8_backend asks")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice; the note above says what ran
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def prepare_model(
    reference: nn.Module, config: InferenceConfig, device: torch.device | str = "cpu"
) -> PreparedModel:
    """A served copy of `reference` (left untouched) with `config`'s precision, fusion and
    compile applied, on `device`. Refusals (`tuner.inference.refusals`) are checked before
    this. On a GPU the weights are moved there, then cast (bf16/fp16) or quantized (torchao
    int8), and the module is wrapped in `OnDevice` so host-side inputs follow it."""
    device = torch.device(device)
    notes: list[str] = []
    model = copy.deepcopy(reference).eval()
    if config.fusion:
        # on the host copy: folding is device-independent
        fused = fuse_conv_bn_relu(model)
        model, fused_notes = fuse_workload_operators(model, compiled=config.compile_mode != "off")
        if fused:
            notes.append(f"fused {fused} Conv+BN(+ReLU) runs")
        notes += fused_notes
        if not fused and not fused_notes:
            notes.append("fusion: the model has no Conv+BN and no fused serving form")
    if device.type == "cuda":
        model = model.to(device)
    dtype = CAST_DTYPES.get(config.serving_precision, torch.float32)
    if dtype != torch.float32:
        # fp16 reaches here on a GPU only (refused on the CPU)
        model = model.to(dtype)
    elif config.int8:
        model = _quantize_int8(model, config, notes)
    if config.compile_mode != "off":
        # Dynamo keeps at most 8 compiled entries per code object, and each prepared model
        # is a new guard: without a reset, from the 9th compiled model of a process on the
        # forward would run eager while its notes said compiled. A served model is
        # prepared (all its instances) before any forward, one config at a time per process.
        torch._dynamo.reset()
        # dynamic=True: batch sizes and lengths vary request to request; one graph with
        # symbolic shapes instead of a recompile per shape. reduce-overhead (GPU only)
        # records a CUDA graph per shape and replays it.
        model = torch.compile(model, mode=config.compile_mode, dynamic=True)
        notes.append(f"torch.compile(mode={config.compile_mode!r}, dynamic=True)")
        if config.compile_mode == "reduce-overhead":
            notes.append("CUDA graphs: reduce-overhead replays one recorded graph per input shape")
    if device.type == "cuda":
        model = OnDevice(model, device, dtype)
        notes.append(f"served on {device} ({str(dtype).replace('torch.', '')} weights), one CUDA stream per instance")
    return PreparedModel(module=model, dtype=dtype, notes=notes, device=device, stream=new_stream(device))


def _inner_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a weight, a tensor subclass (torchao's Int8Tensor: qdata + scales) included."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor) is not torch.Tensor and type(tensor) is not nn.Parameter:
        names, _ = flatten()
        return sum(_inner_bytes(getattr(tensor, name)) for name in names)
    if tensor.is_quantized:
        scales = (
            tensor.q_per_channel_scales().numel() * 12
            if tensor.qscheme()
            in (
                torch.per_channel_affine,
                torch.per_channel_symmetric,
            )
            else 12
        )
        return tensor.numel() * tensor.element_size() + scales
    return tensor.numel() * tensor.element_size()


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the weights of every Linear layer (float, torchao int8 or fbgemm int8)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += _inner_bytes(module.weight)
        elif type(module).__module__.startswith("torch.ao.nn.quantized.dynamic") and hasattr(
            module, "_packed_params"
        ):
            weight, _bias = module._packed_params._weight_bias()
            total += _inner_bytes(weight)
    return total
