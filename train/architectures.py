"""The architectures `toolkit train --arch` knows: name -> config dataclass and module class.

A checkpoint stores the name and the config's fields (nanoGPT-style), so every command rebuilds the
network from the file alone. Files written before the name was stored are MLPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cnn import CNNConfig, LeNetCNN
from .model import MLPConfig, SimpleNN


@dataclass(frozen=True)
class Architecture:
    config: type
    module: type
    default_recipe: str


ARCHITECTURES = {
    "mlp": Architecture(MLPConfig, SimpleNN, default_recipe="seed"),
    "cnn": Architecture(CNNConfig, LeNetCNN, default_recipe="cnn"),
}
DEFAULT_ARCH = "mlp"


def config_from_dict(arch: str, d: dict):
    """The config of architecture ``arch``; KeyError for an unknown name, TypeError/ValueError for bad fields."""
    return ARCHITECTURES[arch].config.from_dict(d)


def build(config):
    """A freshly initialised module for ``config`` (any registered config dataclass)."""
    return ARCHITECTURES[config.arch].module(config)


def count_flops(model, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one image through ``model`` in eval mode, as torch's FlopCounterMode counts them.

    That counter counts matrix multiplies and convolutions (2 per multiply-add) and nothing else:
    BatchNorm folds into them at inference, activations and pooling are memory-bound.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
