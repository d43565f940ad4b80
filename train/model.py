"""The seed's MLP, with its module layout kept so the seed's own state_dict loads unchanged.

The seed names its network ``SimpleNN`` with one ``nn.Sequential`` called ``model``
whose index 0 is ``Flatten``; parameter keys are therefore ``model.1.weight`` … ``model.13.bias``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    arch: ClassVar[str] = "mlp"  # the name checkpoints store (train.architectures)
    in_features: int = 28 * 28
    hidden: tuple[int, ...] = (512, 256, 128)
    num_classes: int = 10
    negative_slope: float = 0.1
    dropout: float = 0.3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MLPConfig":
        d = dict(d)
        d["hidden"] = tuple(int(h) for h in d.get("hidden", cls.hidden))
        return cls(**d)

    def flops_per_image(self) -> int:
        """Multiply-adds x2 of the linear layers (BatchNorm folds away at inference)."""
        dims = [self.in_features, *self.hidden, self.num_classes]
        return sum(2 * a * b for a, b in zip(dims[:-1], dims[1:]))

    def describe(self) -> str:
        dims = [self.in_features, *self.hidden, self.num_classes]
        return (f"MLP {'-'.join(map(str, dims))} with BatchNorm, LeakyReLU({self.negative_slope}), "
                f"Dropout({self.dropout})")


class SimpleNN(nn.Module):
    def __init__(self, config: MLPConfig = MLPConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = [nn.Flatten()]
        width = config.in_features
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.LeakyReLU(config.negative_slope), nn.Dropout(config.dropout)]
            width = h
        layers.append(nn.Linear(width, config.num_classes))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
