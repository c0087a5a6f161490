"""How a backbone computes (sparkdl.featurize.precision): the auto choices, the CPU fallback, the device choice
(the CUDA path's decisions, tested without a GPU), and what a bundle records."""
from __future__ import annotations

import pytest

from sparkdl.config import FeaturizeConfig
from sparkdl.errors import ConfigError
from sparkdl.featurize import precision as P
from sparkdl.featurize.backbones import get_backbone
from sparkdl.featurize.precision import Numerics, choose, effective, pick_device

LITE0, VGG16 = get_backbone("efficientnet_lite0").numerics, get_backbone("vgg16").numerics
WITH_BF16, WITHOUT_BF16 = frozenset({"avx512f", "avx512_bf16"}), frozenset({"avx512f", "avx512_vnni"})


def test_auto_is_each_backbones_measured_choice():
    assert choose(LITE0) == Numerics("fp32", "onnxruntime")  # bf16 fails the fidelity bar on Lite0: never auto
    assert choose(VGG16) == Numerics("bf16", "torch")
    assert choose(get_backbone("tiny").numerics) == Numerics("fp32", "torch")


@pytest.mark.parametrize(
    "preferred, precision, runtime, expected",
    [
        (LITE0, "fp32", "auto", Numerics("fp32", "onnxruntime")),
        (LITE0, "bf16", "auto", Numerics("bf16", "torch")),
        (LITE0, "auto", "torch", Numerics("fp32", "torch")),
        (VGG16, "fp32", "auto", Numerics("fp32", "torch")),
        (VGG16, "auto", "onnxruntime", Numerics("fp32", "onnxruntime")),
        (VGG16, "bf16", "torch", Numerics("bf16", "torch")),
    ],
)
def test_explicit_choices(preferred, precision, runtime, expected):
    assert choose(preferred, precision, runtime) == expected


def test_bad_choices_are_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="onnxruntime runtime computes fp32 only; use --runtime torch"):
        choose(VGG16, "bf16", "onnxruntime")
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, got 'int8'"):
        choose(VGG16, "int8")
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda"):
        FeaturizeConfig(input_uri="a", output_uri="b", device="tpu")


def test_records_round_trip_and_old_records_are_fp32_torch():
    assert Numerics.from_json(Numerics("bf16", "torch").to_json()) == Numerics("bf16", "torch")
    assert Numerics.from_json(None) == Numerics.from_json({}) == Numerics("fp32", "torch")
    with pytest.raises(ConfigError):
        Numerics.from_json({"precision": "fp8"})


def test_a_cpu_without_bf16_computes_fp32_and_says_so():
    bf16 = Numerics("bf16", "torch")
    assert effective(bf16, "cpu", WITH_BF16) == (bf16, None)
    assert effective(bf16, "cpu", frozenset({"amx_bf16"}))[0] == bf16
    numerics, notice = effective(bf16, "cpu", WITHOUT_BF16)
    assert numerics == Numerics("fp32", "torch")
    assert notice == "this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): computing fp32 instead of bf16"
    assert effective(Numerics("fp32", "onnxruntime"), "cpu", WITHOUT_BF16) == (Numerics("fp32", "onnxruntime"), None)


def test_on_a_gpu_the_runtime_is_torch():
    assert effective(Numerics("bf16", "torch"), "cuda:1", WITHOUT_BF16) == (Numerics("bf16", "torch"), None)
    numerics, notice = effective(Numerics("fp32", "onnxruntime"), "cuda:0")
    assert numerics == Numerics("fp32", "torch") and "onnxruntime is CPU-only" in notice


def test_device_choice():
    assert pick_device("cpu", gpus=["0"], cuda_available=True) == "cpu"
    assert pick_device("auto", gpus=["1"], cuda_available=True) == "cuda:1"  # the GPU Spark assigned the task
    assert pick_device("auto", gpus=[], cuda_available=True) == "cuda:0"  # outside Spark: the first GPU
    assert pick_device("auto", gpus=[], cuda_available=False) == "cpu"
    assert pick_device("cuda", gpus=["2"], cuda_available=True) == "cuda:2"
    with pytest.raises(ConfigError, match="--device cuda: Spark assigned GPU 0 but torch sees no CUDA device"):
        pick_device("cuda", gpus=["0"], cuda_available=False)
    with pytest.raises(ConfigError, match="--device cuda: torch sees no CUDA device on this host"):
        pick_device("cuda", gpus=[], cuda_available=False)


def test_task_gpus_reads_the_resources_spark_assigned(monkeypatch):
    import pyspark

    class Resource:
        addresses = ["3", "4"]

    class Context:
        def resources(self):
            return {"gpu": Resource()}

    assert P.task_gpus() == []  # outside a task
    monkeypatch.setattr(pyspark.TaskContext, "get", classmethod(lambda cls: Context()))
    assert P.task_gpus() == ["3", "4"]
    assert pick_device("auto", cuda_available=True) == "cuda:3"


def test_cpu_flags_are_read_from_this_host():
    flags = P.cpu_flags()
    assert isinstance(flags, frozenset)
    assert P.cpu_has_bf16(flags) == bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


@pytest.mark.parametrize("name", ["tiny", "efficientnet_lite0", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_the_onnxruntime_runtime_computes_torchs_fp32_features(name):
    """Every backbone exports and runs on ONNX Runtime (VGG16: its adaptive pooling needs a fixed input size)."""
    import numpy as np
    import torch

    from sparkdl.featurize.backbones import load_backbone

    reference = load_backbone(name, random_init=name == "vgg16")
    ort = load_backbone(name, random_init=name == "vgg16", numerics=Numerics("fp32", "onnxruntime"), threads=2)
    assert ort.numerics == Numerics("fp32", "onnxruntime") and ort.notice is None
    crop = reference.preprocess.crop
    batch = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 3, crop, crop)).astype(np.float32))
    np.testing.assert_allclose(ort(batch).numpy(), reference(batch).numpy(), rtol=1e-4, atol=1e-5)
