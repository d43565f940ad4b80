"""A small LeNet-style CNN: two conv blocks (5x5 conv, BatchNorm, ReLU, 2x2 max-pool) and two linear layers.

Sized for a 2-core CPU: 12 and 24 channels train at ~23 s an epoch there, where 32 and 64 took three times
as long for a few hundredths of a point. Same input as the MLP ((N, 1, 28, 28) from PreprocessSpec), so
data path, export, parity gate and runtime are shared unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class CNNConfig:
    arch: ClassVar[str] = "cnn"
    in_channels: int = 1
    height: int = 28
    width: int = 28
    channels: tuple[int, ...] = (12, 24)
    kernel_size: int = 5
    hidden: int = 128
    num_classes: int = 10
    dropout: float = 0.2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CNNConfig":
        d = dict(d)
        d["channels"] = tuple(int(c) for c in d.get("channels", cls.channels))
        config = cls(**d)
        sizes = (config.in_channels, config.height, config.width, config.kernel_size, config.hidden,
                 config.num_classes, *config.channels)
        if not all(isinstance(v, int) and v > 0 for v in sizes) or not 0 <= config.dropout < 1:
            raise ValueError(f"sizes must be positive integers and dropout in [0, 1): {config}")
        if config.kernel_size % 2 == 0 or min(config.height, config.width) >> len(config.channels) < 1:
            raise ValueError(f"kernel {config.kernel_size} must be odd and {len(config.channels)} 2x2 poolings "
                             f"must fit {config.height}x{config.width}")
        return config

    @property
    def feature_size(self) -> tuple[int, int]:
        """Height and width after the poolings (each halves, rounding down)."""
        n = len(self.channels)
        return self.height >> n, self.width >> n

    def flops_per_image(self) -> int:
        from .flops import count_flops

        return count_flops(LeNetCNN(self), (self.in_channels, self.height, self.width))

    def describe(self) -> str:
        convs = "-".join(map(str, self.channels))
        return (f"CNN conv{self.kernel_size}x{self.kernel_size} {self.in_channels}-{convs} (BatchNorm, ReLU, "
                f"max-pool 2) -> {self.hidden} -> {self.num_classes}, Dropout({self.dropout})")


class LeNetCNN(nn.Module):
    def __init__(self, config: CNNConfig = CNNConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.in_channels
        for c in config.channels:
            # "same" padding keeps the border strokes of off-centre digits inside the receptive field
            layers += [nn.Conv2d(width, c, config.kernel_size, padding=config.kernel_size // 2, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*layers)
        h, w = config.feature_size
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * h * w, config.hidden), nn.ReLU(),
                                        nn.Dropout(config.dropout), nn.Linear(config.hidden, config.num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
