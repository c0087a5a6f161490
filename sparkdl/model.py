"""The trainable head on top of frozen features: built, described as plain data (``HeadSpec``), scored. Used by
training, the bundle, evaluation and inference (no Spark)."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sparkdl.config import HeadConfig
from sparkdl.errors import DataError

HEAD_DTYPE = "F32"  # safetensors' name of the one dtype a head's tensors have (float32)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's dtype (safetensors' code, e.g. ``F32``) and shape: what a safetensors header says, no data."""

    dtype: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: np.ndarray) -> "TensorInfo":
        dtype = HEAD_DTYPE if array.dtype == np.float32 else str(array.dtype)
        return cls(dtype, tuple(int(n) for n in array.shape))


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


def head_shapes(config: HeadConfig, in_dim: int, n_classes: int) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes :func:`build_head` gives, computed without building (allocating) anything."""
    shapes: dict[str, tuple[int, ...]] = {}
    index, width = 0, in_dim
    for hidden in config.hidden:
        shapes[f"{index}.weight"], shapes[f"{index}.bias"] = (hidden, width), (hidden,)
        index += 3 if config.dropout > 0 else 2  # Linear, ReLU[, Dropout]
        width = hidden
    shapes[f"{index}.weight"], shapes[f"{index}.bias"] = (n_classes, width), (n_classes,)
    return shapes


def check_head_tensors(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, TensorInfo], source: str) -> None:
    """One-line ``DataError`` naming ``source`` and the tensor when ``found`` is not exactly ``expected`` (float32)."""
    missing = sorted(set(expected) - set(found))
    extra = [key[:40] for key in sorted(set(found) - set(expected))]  # names from an untrusted file: keep it one line
    if missing or extra:
        raise DataError(
            f"{source}: tensors do not match the head in config.json (missing {missing[:4]}, unexpected {extra[:4]}); "
            "config.json and head.safetensors must come from the same model"
        )
    for key, shape in expected.items():
        info = found[key]
        if info.dtype != HEAD_DTYPE:
            raise DataError(f"{source}: tensor {key!r} has dtype {info.dtype[:16]!r}, expected {HEAD_DTYPE} (float32)")
        if tuple(info.shape) != shape:
            raise DataError(
                f"{source}: tensor {key!r} has shape {list(info.shape)[:8]} but config.json's head implies {list(shape)}; "
                "config.json and head.safetensors must come from the same model"
            )


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

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return head_shapes(self.config, self.in_dim, self.n_classes)

    def check_shapes(self, found: Mapping[str, TensorInfo] | None = None, source: str = "head") -> None:
        """``DataError`` unless ``found`` (a safetensors header's tensors; default: this spec's own params) is exactly
        the tensors :meth:`build` loads; checks shapes only, so it allocates nothing whatever the sizes claim."""
        if found is None:
            found = {k: TensorInfo.of(np.asarray(v)) for k, v in self.params.items()}
        check_head_tensors(self.expected_shapes(), found, source)

    def build(self) -> nn.Module:
        model = build_head(self.config, self.in_dim, self.n_classes)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.params.items()}, strict=True)
        return model.eval()


def writable(a: np.ndarray, dtype) -> np.ndarray:
    """A contiguous array torch may wrap without a warning (buffers from Arrow/bytes are read-only)."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.writeable else a.copy()


@torch.inference_mode()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    model.eval()
    xt = torch.from_numpy(writable(x, np.float32))
    return torch.cat([model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)] or [torch.zeros(0)]).numpy()
