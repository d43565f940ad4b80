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

