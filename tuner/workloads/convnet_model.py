"""A small ResNet-like image classifier: the conv net whose Conv+BN+ReLU runs the
inference engine's fusion folds.

Stem conv-BN-ReLU, then stages of basic residual blocks (conv-BN-ReLU-conv-BN plus the
skip, then ReLU), global average pooling and a Linear head over `classes`. Every conv is
followed by its BN inside an nn.Sequential, so the fuser finds each run. The BNs carry
non-trivial running statistics (drawn with a fixed seed) so folding them really changes
the conv weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from tuner.inference.serving import ServingSetup, ServingShape

MODEL_SEED = 5
HELDOUT_SEED = 31
HELDOUT_REQUESTS = 128


def conv_bn(fan_in: int, fan_out: int, *, stride: int = 1, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(fan_in, fan_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(fan_out),
    ]
    return [*layers, nn.ReLU()] if relu else layers


class BasicBlock(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(fan_in, fan_out, stride=stride), *conv_bn(fan_out, fan_out, relu=False)
        )
        self.skip = (
            nn.Sequential(nn.Conv2d(fan_in, fan_out, 1, stride=stride, bias=False), nn.BatchNorm2d(fan_out))
            if stride != 1 or fan_in != fan_out
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.skip(x))


class ConvNet(nn.Module):
    def __init__(self, *, width: int, blocks_per_stage: int, classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = list(conv_bn(3, width))
        fan_in = width
        for stage, fan_out in enumerate((width, width * 2, width * 4)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(fan_in, fan_out, stride))
                fan_in = fan_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(fan_in, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(images)).flatten(1))


def build_convnet(params: Mapping[str, Any]) -> nn.Module:
    torch.manual_seed(MODEL_SEED)
    model = ConvNet(
        width=params["width"], blocks_per_stage=params["blocks_per_stage"], classes=params["classes"]
    )
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.1, 0.1)
    return model.eval()


def build_convnet_serving(params: Mapping[str, Any]) -> ServingSetup:
    model = build_convnet(params)
    size = params["image_size"]

    def make_requests(count: int, seed: int) -> list[torch.Tensor]:
        return list(torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed)))

    def forward(module: nn.Module, images: Sequence[torch.Tensor], padding: str) -> torch.Tensor:
        return module(torch.stack(list(images)))

    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    total = sum(p.numel() for p in model.parameters())
    return ServingSetup(
        model=model,
        make_requests=make_requests,
        forward=forward,
        heldout=lambda: (make_requests(HELDOUT_REQUESTS, HELDOUT_SEED), None),
        accuracy_kind="classes",
        # the stem's and first stage's feature maps dominate: a few width x H x W maps live
        shape=ServingShape(
            linear, total - linear, activation_bytes_per_item=4.0 * 4 * params["width"] * size * size
        ),
    )
