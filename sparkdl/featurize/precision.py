"""How a backbone computes its features: precision (fp32 | bf16), runtime (torch | onnxruntime), device (cpu | cuda).

Chosen by measurement on real images with the real weights (``BENCHMARKS.md``, ``tests/spark/test_precision.py``):

* EfficientNet-Lite0: fp32 on ONNX Runtime: identical features (per-row cosine to torch fp32 ≥ 0.99999) at ≈ 3.5×
  torch's speed (torch's depthwise convolutions are slow on CPU). bf16 is faster than torch fp32 too, but its
  depthwise convolutions lose too much (min per-row cosine 0.987 on the 1,797 digits): it is allowed, never chosen.
* VGG16: bf16 on torch (oneDNN; AMX or AVX-512 BF16): 3-4× fp32 on the machines measured, cosine ≥ 0.99999.
* int8 is not offered: ONNX Runtime's static quantization (QDQ, per-channel, MinMax calibration on the user's
  images) reached only 0.95 per-row cosine on EfficientNet-Lite0 (BENCHMARKS.md), below the 0.99 this project asks.

The driver resolves ``auto`` into a :class:`Numerics` (what the features table records and a bundle carries) and
every executor runs that; a CPU without bf16 instructions computes fp32 instead and says so (``fallback``).
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass

from sparkdl.config import DEVICES, PRECISIONS, RUNTIMES
from sparkdl.errors import ConfigError

__all__ = ["DEVICES", "PRECISIONS", "RUNTIMES", "Numerics", "choose", "effective", "pick_device"]
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 BF16 / AMX; Arm's "bf16" feature


@dataclass(frozen=True)
class Numerics:
    """What a backbone computes with: recorded in the features meta (``backbone.numerics``) and carried by a bundle,
    so predict and serve compute the features the head was trained on the same way."""

    precision: str = "fp32"  # fp32 | bf16
    runtime: str = "torch"  # torch | onnxruntime

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS[1:]:
            raise ConfigError(f"precision must be one of {PRECISIONS[1:]}, got {self.precision!r}")
        if self.runtime not in RUNTIMES[1:]:
            raise ConfigError(f"runtime must be one of {RUNTIMES[1:]}, got {self.runtime!r}")
        if self.runtime == "onnxruntime" and self.precision != "fp32":
            raise ConfigError(f"the onnxruntime runtime computes fp32 only; use --runtime torch for {self.precision}")

    def to_json(self) -> dict:
        return {"precision": self.precision, "runtime": self.runtime}

    @classmethod
    def from_json(cls, record: dict | None) -> "Numerics":
        """A features meta's / bundle's record; tables and bundles from before precisions existed are fp32 torch."""
        record = record or {}
        return cls(str(record.get("precision", "fp32")), str(record.get("runtime", "torch")))

    def describe(self) -> str:
        return f"{self.precision} on {self.runtime}"


def choose(preferred: Numerics, precision: str = "auto", runtime: str = "auto") -> Numerics:
    """The driver's plan. ``precision='auto'``: the backbone's measured choice (``preferred``); ``runtime='auto'``:
    the measured best runtime for that precision (bf16 runs on torch; fp32 on the backbone's preferred runtime)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if precision == "auto":
        precision = preferred.precision if runtime in ("auto", preferred.runtime) else "fp32"
    if runtime == "auto":
        runtime = preferred.runtime if precision == preferred.precision else "torch"
    return Numerics(precision, runtime)


def cpu_flags() -> frozenset[str]:
    """This host's CPU feature flags (Linux ``/proc/cpuinfo``; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16(flags: frozenset[str] | None = None) -> bool:
    """Native bf16 arithmetic (AVX-512 BF16, AMX, Arm BF16): without it torch emulates bf16, slower than fp32."""
    return bool(_BF16_FLAGS & (cpu_flags() if flags is None else flags))


def task_gpus() -> list[str]:
    """The GPU addresses Spark assigned the running task (``spark.task.resource.gpu.amount``); [] outside a task."""
    try:
        from pyspark import TaskContext
    except ImportError:
        return []
    ctx = TaskContext.get()
    if ctx is None:
        return []
    info = (ctx.resources() or {}).get("gpu")
    return list(info.addresses) if info is not None else []


def pick_device(requested: str = "auto", *, gpus: list[str] | None = None, cuda_available: bool | None = None) -> str:
    """``auto``: the GPU Spark assigned this task, else the first visible GPU outside Spark tasks, else the CPU;
    ``cuda``: the same but a GPU is required; ``cpu``: the CPU. Returns a torch device string."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        return "cpu"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    assigned = task_gpus() if gpus is None else gpus
    if cuda_available:
        return f"cuda:{assigned[0]}" if assigned else "cuda:0"
    if requested == "cuda":
        where = f"Spark assigned GPU {assigned[0]} but " if assigned else ""
        raise ConfigError(f"--device cuda: {where}torch sees no CUDA device on this host (a CPU-only torch build?); "
                          "use --device auto or cpu")  # fmt: skip
    return "cpu"


def effective(plan: Numerics, device: str, flags: frozenset[str] | None = None) -> tuple[Numerics, str | None]:
    """What this process runs for ``plan`` on ``device``, and a one-line notice when that differs: bf16 on a CPU
    without bf16 instructions runs fp32; on a GPU the runtime is torch (ONNX Runtime's CPU build has no GPU)."""
    if device.startswith("cuda"):
        if plan.runtime == "onnxruntime":
            return Numerics(plan.precision, "torch"), f"{device}: running {plan.precision} on torch (onnxruntime is CPU-only here)"
        return plan, None
    if plan.precision == "bf16" and not cpu_has_bf16(flags):
        return Numerics("fp32", "torch"), ("this CPU has no bf16 instructions (avx512_bf16 / amx_bf16): computing "
                                           "fp32 instead of bf16")  # fmt: skip
    return plan, None


def cuda_half_dtype(device: str):
    """bf16 where the GPU has it (Ampere and later), else fp16."""
    import torch

    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class OnnxRunner:
    """A torch feature extractor exported to ONNX (in memory, in this process: deterministic for one torch
    version) for ``crop`` x ``crop`` inputs and any batch size (VGG16's adaptive pooling exports only with a fixed
    input size), run by ONNX Runtime's CPU provider with ``threads`` intra-op threads."""

    INPUT, OUTPUT = "images", "features"

    def __init__(self, module, crop: int, threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the onnxruntime runtime needs the onnxruntime and onnx packages: "
                              "pip install 'onnxruntime>=1.17' 'onnx>=1.16', or use --runtime torch") from None  # fmt: skip
        import torch

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
            torch.onnx.export(module, torch.zeros(1, 3, crop, crop), buf, input_names=[self.INPUT],
                              output_names=[self.OUTPUT], dynamic_axes={self.INPUT: {0: "n"}, self.OUTPUT: {0: "n"}},
                              opset_version=17, dynamo=False)  # fmt: skip
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        # idle intra-op threads must not spin: the same cores decode the next batch
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = max(1, threads)
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])

    def __call__(self, batch):
        import numpy as np

        return self.session.run(None, {self.INPUT: np.ascontiguousarray(batch, dtype=np.float32)})[0]


def describe_host() -> dict:
    """What a benchmark or a notice says about this host."""
    flags = cpu_flags()
    return {"cpu_bf16": cpu_has_bf16(flags), "amx": "amx_bf16" in flags, "cpus": os.cpu_count() or 1}
