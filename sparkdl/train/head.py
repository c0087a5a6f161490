"""The trainable head on top of frozen features."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from sparkdl.config import HeadConfig


def build_head(config: HeadConfig, in_dim: int, n_classes: int, seed: int | None = None) -> nn.Module:
    """Softmax regression (one Linear) or an MLP; logits out (the loss applies the softmax).

    With ``seed`` the initial weights come from a forked RNG seeded with it, so every process builds the same head
    and the caller's global RNG is untouched.
    """
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        layers: list[nn.Module] = []
        width = in_dim
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)


class HeadSpec:
    """A head as plain data (config, shape, weights as numpy arrays): what the driver broadcasts and the bundle saves."""

    def __init__(self, config: HeadConfig, in_dim: int, n_classes: int, params: dict) -> None:
        self.config = config
        self.in_dim = in_dim
        self.n_classes = n_classes
        self.params = params

    @classmethod
    def from_module(cls, config: HeadConfig, in_dim: int, n_classes: int, module: nn.Module) -> "HeadSpec":
        return cls(config, in_dim, n_classes, {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()})

    def build(self) -> nn.Module:
        model = build_head(self.config, self.in_dim, self.n_classes)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.params.items()}, strict=True)
        return model.eval()
