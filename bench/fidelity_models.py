"""The whole models of issue 19's fidelity table, built in plain ``torch.nn`` with random weights.

No torchvision and no downloads: ResNet-50 (He et al. 2016, torchvision's v1.5 layout: the stride
on the bottleneck's 3x3) and ViT-B/16 (Dosovitskiy et al. 2021: 16x16 patches, 12 pre-LN layers of
hidden 768, 12 heads, MLP 3072, a class token) as their papers define them; BERT is
``bench_torch_bert.Bert``. ``build(name, ...)`` returns ``(module, inputs, input_names)``.
"""

from __future__ import annotations

import math
import os
import sys

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks: list[nn.Module] = []
        inplanes = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=False)):
            for j in range(count):
                blocks.append(Bottleneck(inplanes, planes, 2 if (j == 0 and i > 0) else 1))
                inplanes = planes * 4
        self.blocks = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():  # non-trivial statistics, so folding them is visible in the values
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.blocks(x))
        return self.fc(torch.flatten(x, 1))


class VitLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=1e-6)
        self.fc1 = nn.Linear(hidden, mlp)
        self.fc2 = nn.Linear(mlp, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(d)).softmax(-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, s, h))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """ViT-B/16 by default (image 224, patch 16, hidden 768, 12 layers, 12 heads, MLP 3072)."""

    def __init__(self, image: int = 224, patch: int = 16, hidden: int = 768, layers: int = 12,
                 heads: int = 12, mlp: int = 3072, num_classes: int = 1000) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, hidden, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
        self.layers = nn.Sequential(*(VitLayer(hidden, heads, mlp) for _ in range(layers)))
        self.norm = nn.LayerNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.layers(x))
        return self.head(x[:, 0])


def build(name: str, batch: int, seq: int = 128) -> tuple[nn.Module, tuple, list[str]]:
    """``(module in eval mode, example inputs, input names)`` for ``resnet50``, ``vit_b16``,
    ``bert_base`` or ``bert_large`` (``seq`` for BERT)."""
    torch.manual_seed(0)
    if name == "resnet50":
        return ResNet50().eval(), (torch.randn(batch, 3, 224, 224),), ["x"]
    if name == "vit_b16":
        return ViT().eval(), (torch.randn(batch, 3, 224, 224),), ["x"]
    if name in ("bert_base", "bert_large"):
        sys.path.insert(0, HERE)
        import bench_torch_bert as bert  # noqa: PLC0415

        layers, hidden = (12, 768) if name == "bert_base" else (24, 1024)
        ids = torch.randint(0, 30522, (batch, seq), generator=torch.Generator().manual_seed(0))
        types = torch.zeros(batch, seq, dtype=torch.long)
        attention = torch.ones(batch, seq, dtype=torch.long)
        return bert.Bert(layers, hidden, hidden // 64).eval(), (ids, types, attention), ["ids", "types",
                                                                                          "attention"]
    raise ValueError(f"unknown model {name!r}: resnet50, vit_b16, bert_base or bert_large")
