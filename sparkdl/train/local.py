"""The minibatch loop one worker runs on its rows, and the (de)flattening of model + optimizer state.

No Spark, no networking: the exchanges call this on each worker (or in-process for references and tests).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sparkdl.config import OptimizerConfig
from sparkdl.model import writable


def build_optimizer(config: OptimizerConfig, params) -> torch.optim.Optimizer:
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.name == "nesterov",
        weight_decay=config.weight_decay,
    )


def get_params(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def set_params(model: nn.Module, params: dict[str, np.ndarray]) -> None:
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()}, strict=True)


def get_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, np.ndarray]:
    """Every per-parameter state tensor, keyed ``<param index>.<name>`` (momentum buffers, Adam moments, step)."""
    out: dict[str, np.ndarray] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{index}.{name}"] = np.asarray(value.detach().cpu().numpy() if torch.is_tensor(value) else value, dtype=np.float64 if name == "step" else np.float32).copy()
    return out


def set_optimizer_state(optimizer: torch.optim.Optimizer, flat: dict[str, np.ndarray]) -> None:
    if not flat:
        return
    sd = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        index, name = key.split(".", 1)
        tensor = torch.tensor(float(value), dtype=torch.float32) if name == "step" else torch.from_numpy(np.array(value, dtype=np.float32))
        state.setdefault(int(index), {})[name] = tensor
    sd["state"] = state
    optimizer.load_state_dict(sd)


@dataclass
class FitStats:
    loss_sum: float = 0.0  # sum over minibatches of (mean loss x minibatch size)
    examples: int = 0
    minibatches: int = 0
    seconds: float = 0.0


def fit_minibatches(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
) -> FitStats:
    """One pass over ``x``/``y`` in order, in minibatches of ``batch_size`` (the last one may be smaller)."""
    stats = FitStats()
    start = time.perf_counter()
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(writable(x, np.float32))
    yt = torch.from_numpy(writable(y, np.int64))
    for begin in range(0, len(xt), batch_size):
        xb, yb = xt[begin : begin + batch_size], yt[begin : begin + batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        stats.loss_sum += float(loss.detach()) * len(xb)
        stats.examples += len(xb)
        stats.minibatches += 1
    stats.seconds = time.perf_counter() - start
    return stats
