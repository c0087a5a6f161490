"""VGG16 (configuration D) in plain torch, with torchvision's state-dict keys, and the Keras HDF5 conversion.

torchvision does not import with the CPU torch this project pins, so the architecture is written out here; any
torchvision ``vgg16`` state dict (e.g. ``vgg16-397923af.pth``) loads with ``strict=True``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sparkdl.errors import ConfigError

_CFG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

# Keras layer name -> index in torchvision's ``features`` / ``classifier`` Sequential.
KERAS_CONV = {
    "block1_conv1": 0, "block1_conv2": 2,
    "block2_conv1": 5, "block2_conv2": 7,
    "block3_conv1": 10, "block3_conv2": 12, "block3_conv3": 14,
    "block4_conv1": 17, "block4_conv2": 19, "block4_conv3": 21,
    "block5_conv1": 24, "block5_conv2": 26, "block5_conv3": 28,
}  # fmt: skip
KERAS_DENSE = {"fc1": 0, "fc2": 3, "predictions": 6}


class VGG16(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _CFG_D:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                in_ch = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


class VGG16Fc2(nn.Module):
    """VGG16 cut after ``fc2`` + ReLU: 4096 features (dropout is inactive in eval mode)."""

    def __init__(self, vgg: VGG16) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.vgg.avgpool(self.vgg.features(x)), 1)
        return self.vgg.classifier[:5](x)


def keras_vgg16_to_state_dict(layers: dict[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """Keras VGG16 (``tf`` dim ordering: conv kernels HWIO, dense kernels (in, out)) -> torchvision keys.

    ``fc1`` sees the last pooling output flattened as NHWC in Keras and as NCHW in torch, so its input rows are
    permuted from (h, w, c) to (c, h, w) order.
    """
    missing = [n for n in (*KERAS_CONV, *KERAS_DENSE) if n not in layers]
    if any(n in missing for n in ("fc1", "fc2")) and not any(n in missing for n in KERAS_CONV):
        raise ConfigError(
            "this Keras VGG16 file has no fc1/fc2 layers (an `include_top=False` / *_notop file); the VGG16 "
            "backbone is cut after fc2 and needs the full file (vgg16_weights_tf_dim_ordering_tf_kernels.h5)"
        )
    if missing:
        raise ConfigError(f"not a Keras VGG16 weights file: layers {missing} are missing (found {sorted(layers)})")
    sd: dict[str, torch.Tensor] = {}
    for name, idx in KERAS_CONV.items():
        kernel, bias = _kernel_bias(layers, name)
        if kernel.ndim != 4 or kernel.shape[:2] != (3, 3):
            raise ConfigError(
                f"Keras layer {name} has kernel shape {kernel.shape}; expected (3, 3, in, out) from a "
                "tf-dim-ordering file (Theano-ordered *_th_* files are not supported)"
            )
        sd[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        sd[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    for name, idx in KERAS_DENSE.items():
        kernel, bias = _kernel_bias(layers, name)
        if name == "fc1":
            if kernel.shape[0] != 7 * 7 * 512:
                raise ConfigError(f"Keras fc1 kernel has shape {kernel.shape}; expected (25088, 4096) for 224x224 VGG16")
            kernel = kernel.reshape(7, 7, 512, -1).transpose(2, 0, 1, 3).reshape(7 * 7 * 512, -1)
        sd[f"classifier.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        sd[f"classifier.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return sd


def _kernel_bias(layers: dict[str, list[np.ndarray]], name: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = layers[name]
    if len(arrays) != 2:
        raise ConfigError(f"Keras layer {name} holds {len(arrays)} arrays; expected a kernel and a bias")
    kernel, bias = (np.asarray(a, dtype=np.float32) for a in arrays)
    if kernel.ndim < bias.ndim:
        kernel, bias = bias, kernel
    return kernel, bias
