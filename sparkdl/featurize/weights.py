"""Pretrained weights from a file: torch state dicts (.pth/.pt/.bin), .safetensors, Keras HDF5 (.h5/.hdf5).

Weights are only ever read from a path (or from a path inside an installed package); nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparkdl.errors import ConfigError
from sparkdl.extras import require

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
KERAS_SUFFIXES = (".h5", ".hdf5")


def weights_format(path: str | os.PathLike) -> str:
    """'torch', 'safetensors' or 'keras', from the file name."""
    name = str(path).lower()
    if name.endswith(TORCH_SUFFIXES):
        return "torch"
    if name.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"
    if name.endswith(KERAS_SUFFIXES):
        return "keras"
    raise ConfigError(
        f"cannot tell the format of weights file {path}: use a torch state dict ({', '.join(TORCH_SUFFIXES)}), "
        f"safetensors ({SAFETENSORS_SUFFIXES[0]}) or Keras HDF5 ({', '.join(KERAS_SUFFIXES)})"
    )


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"weights file {path} does not exist or is not a file")
    return p


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A ``.pth``-style file: a state dict, or a checkpoint holding one under 'state_dict' / 'model'."""
    p = _check_file(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt pickles
        raise ConfigError(f"{path} is not a loadable torch state dict ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} does not hold a state dict (name -> tensor); save one with torch.save(model.state_dict())")
    prefix = "module."
    if obj and all(k.startswith(prefix) for k in obj):  # saved from DataParallel / DDP
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = _check_file(path)
    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a valid safetensors file ({exc})") from None


def _attr_names(attrs, key: str) -> list[str] | None:
    if key not in attrs:
        return None
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in attrs[key]]


def read_keras_h5(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Layer name -> weight arrays in Keras order (kernel, bias), from a Keras 2 weights/model HDF5 file
    (``layer_names`` / ``weight_names`` attributes) or a Keras 3 ``.weights.h5`` (``layers/<name>/vars/<i>``)."""
    h5py = require("h5py", "keras", "reading Keras .h5 weights")
    p = _check_file(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise ConfigError(f"{path} is not an HDF5 file ({exc})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = _attr_names(root.attrs, "layer_names")
        out: dict[str, list[np.ndarray]] = {}
        if layer_names is not None:  # Keras 2
            for name in layer_names:
                group = root[name]
                weight_names = _attr_names(group.attrs, "weight_names") or []
                if weight_names:
                    out[name] = [np.asarray(group[w]) for w in weight_names]
        elif "layers" in root:  # Keras 3
            for name, group in root["layers"].items():
                if "vars" in group and len(group["vars"]):
                    out[name] = [np.asarray(group["vars"][k]) for k in sorted(group["vars"], key=int)]
        else:
            raise ConfigError(f"{path} is HDF5 but not a Keras weights file (no layer_names attribute, no layers group)")
    return out


def check_fit(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ConfigError naming what does not fit (the usual sign of a wrong architecture). Works on a module built
    on the ``meta`` device, so a driver can check a weights file without materializing the network."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong_shape:
            parts.append(f"{len(wrong_shape)} of the wrong shape (e.g. {wrong_shape[:2]})")
        raise ConfigError(
            f"weights in {source} do not fit the {type(module).__name__} architecture: " + "; ".join(parts)
            + ". Is it the right file for this backbone?"
        )


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load after ``check_fit``."""
    check_fit(module, state_dict, source)
    expected = module.state_dict()
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)


def save_state_dict(module_or_sd: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict as .pth/.pt or .safetensors (by suffix)."""
    sd = module_or_sd.state_dict() if isinstance(module_or_sd, nn.Module) else dict(module_or_sd)
    sd = {k: v.detach().contiguous().cpu() for k, v in sd.items()}
    fmt = weights_format(path)
    if fmt == "torch":
        torch.save(sd, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        raise ConfigError(f"cannot write {path}: sparkdl writes .pth/.pt or .safetensors")


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a weights file, recorded in the features table's meta."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
