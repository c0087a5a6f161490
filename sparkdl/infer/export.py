"""``sparkdl export``: a model bundle's whole network *after preprocessing* (backbone -> head -> softmax) as one ONNX
or TorchScript file, and beside it ``FILE.json``: the preprocessing, the labels in index order, the input/output names
and shapes and the bundle's identity — everything a user without sparkdl needs to feed it.

* input ``input``: float32 ``N x 3 x crop x crop`` (NCHW), resized / cropped / normalized as ``Preprocess`` does;
  output ``probabilities``: float32 ``N x n_classes``; the batch axis is dynamic.
* ONNX: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). With torch 2.13 it exports
  EfficientNet-Lite0 ("same" padding through ``F.pad``, ReLU6), VGG16 and ``tiny`` into one self-contained file at
  opsets 13-20 with nothing but ``onnx`` installed. The dynamo exporter (torch's default since 2.9) needs
  ``onnxscript`` (+ ``onnx-ir``, ``sympy``), writes the weights to a second ``FILE.data`` by default and has no
  implementation below opset 18 (Lite0's ``Pad`` cannot be converted down to 17, the model stays at 18). Both matched
  torch within 1.4e-7 on the three backbones. The legacy exporter is deprecated upstream; torch is pinned
  (``torch==2.13.0``), and :func:`export_model` checks every file it writes against torch before it appears.
  Labels, preprocessing and identity are also in the ONNX ``metadata_props``.
* TorchScript: ``torch.jit.trace`` + ``torch.jit.save``; the same description rides in the archive as the extra file
  ``sparkdl.json`` (``torch.jit.load(f, _extra_files={"sparkdl.json": ""})``).

Outputs appear complete or not at all: the file and its sidecar are written as ``FILE.partial`` /
``FILE.json.partial``, the file is loaded back and run (onnxruntime / ``torch.jit.load``) on a batch of another size
than the traced one, compared with torch (max |difference| <= 1e-4), then both are renamed into place. The sidecar
records the file's sha256, so a file and a sidecar from different runs are told apart. An existing output is refused
without ``overwrite``, and ``overwrite`` replaces only an earlier export (a sidecar of this format names it).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sparkdl.data import hadoopfs
from sparkdl.errors import ConfigError, DataError

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "sparkdl.export/1"
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
DEFAULT_OPSET = 17  # read by every current ONNX Runtime (>= 1.11) and most other runtimes
MIN_OPSET, MAX_OPSET = 13, 20  # 13: Softmax over one axis; 20: the TorchScript-based exporter's newest
TOLERANCE = 1e-4  # max |exported - torch| on the check batch
TORCHSCRIPT_EXTRA = "sparkdl.json"
_TRACE_BATCH, _CHECK_BATCH = 2, 3  # different sizes: a batch size baked into the graph fails the check
if TYPE_CHECKING:
    import numpy as np

_EXTRA_HINT = "pip install 'sparkdl-torch[export]' (or onnx and onnxruntime)"


@dataclass(frozen=True)
class ExportConfig:
    """``model``: a bundle directory or Hadoop URI; ``output``: the local file to write (``output + ".json"`` is its
    sidecar); ``opset``: ONNX only, default :data:`DEFAULT_OPSET`."""

    model: str
    output: str
    format: str = "onnx"
    opset: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not str(self.model).strip():
            raise ConfigError("export needs a model: pass --model (a bundle directory or Hadoop URI)")
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.opset is not None:
            if self.format != "onnx":
                raise ConfigError(f"--opset applies to --format onnx only, not {self.format}")
            valid = isinstance(self.opset, int) and not isinstance(self.opset, bool) and MIN_OPSET <= self.opset <= MAX_OPSET
            if not valid:
                raise ConfigError(f"--opset must be an ONNX opset from {MIN_OPSET} to {MAX_OPSET}, got {self.opset!r}")
        out = str(self.output)
        if not out.strip() or out.endswith(("/", os.sep)):
            raise ConfigError(f"--output must name the file to write (e.g. model.{_suffix(self.format)}), got {out!r}")
        if not hadoopfs.is_local(out):
            raise ConfigError(f"export writes a file on the local disk, not {out}: write it here, then copy it "
                              f"(e.g. `sparkdl fs put model.{_suffix(self.format)} {out}`)")  # fmt: skip
        if out.endswith(".partial"):
            raise ConfigError(f"--output {out} ends in .partial, the suffix export stages its files under")

    @property
    def onnx_opset(self) -> int | None:
        return (self.opset or DEFAULT_OPSET) if self.format == "onnx" else None

    @property
    def output_path(self) -> Path:
        return hadoopfs.local_path(self.output)

    @property
    def sidecar_path(self) -> Path:
        return sidecar_of(self.output_path)

    def to_json(self) -> dict:
        return {**asdict(self), "opset": self.onnx_opset}


@dataclass(frozen=True)
class ExportResult:
    output: str
    sidecar: str
    format: str
    opset: int | None
    bytes: int
    file_sha256: str
    model_sha256: str
    labels: tuple[str, ...]
    input_shape: tuple  # ("batch", 3, crop, crop)
    output_shape: tuple  # ("batch", n_classes)
    checked_with: str | None  # "onnxruntime 1.x" / "torch.jit.load"; None when onnxruntime is not installed
    max_abs_diff: float | None  # exported vs torch on the check batch
    seconds: float

    def to_json(self) -> dict:
        return {**asdict(self), "labels": list(self.labels), "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape)}  # fmt: skip


def sidecar_of(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def _suffix(fmt: str) -> str:
    return "onnx" if fmt == "onnx" else "pt"


# -- pre-flight ----------------------------------------------------------------------------------------------------


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError(f"--format onnx needs the onnx package, which is not installed: {_EXTRA_HINT}") from None


def _is_export_sidecar(path: Path, names: str | None = None) -> bool:
    """``path`` is an earlier export's sidecar (naming the file ``names``, if given)."""
    try:
        if path.stat().st_size > 16 * 2**20:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        return False
    return names is None or data.get("file") == names


def _check_outputs(config: ExportConfig) -> None:
    """Refuse before any work: an existing output without overwrite, anything but an earlier export with it, an
    output inside a local model bundle, an unwritable directory."""
    out, side = config.output_path, config.sidecar_path
    for path in (out, side):
        if path.is_dir():
            example = path / f"model.{_suffix(config.format)}"
            raise ConfigError(f"--output {out}: {path} is a directory; name the file to write, e.g. {example}")
        if (path.exists() or path.is_symlink()) and not config.overwrite:
            raise ConfigError(f"{path} already exists: pass --overwrite to replace it, or choose another --output")
    if config.overwrite:
        if (out.exists() or out.is_symlink()) and not _is_export_sidecar(side, out.name):
            raise ConfigError(f"{out} exists but {side} is not the sidecar of an earlier `sparkdl export` naming it: "
                              "--overwrite replaces only an earlier export; remove it yourself or choose another --output")  # fmt: skip
        if side.exists() and not _is_export_sidecar(side):
            raise ConfigError(f"{side} exists and is not an earlier export's sidecar: --overwrite replaces only an "
                              "earlier export; remove it yourself or choose another --output")  # fmt: skip
    if hadoopfs.is_local(config.model):
        bundle = hadoopfs.local_path(config.model).resolve()
        target = out.resolve()
        if target == bundle or bundle in target.parents:
            raise ConfigError(f"--output {out} is inside the model bundle {config.model}: write the export elsewhere")
    existing = out.parent.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {out}: {existing} is not a writable directory")


# -- the sidecar ---------------------------------------------------------------------------------------------------


def describe(classifier, config: ExportConfig) -> dict:
    """The sidecar (less the file's sha256 and the check): what a user without sparkdl needs to feed the file."""
    import torch

    from sparkdl import __version__

    pre = classifier.preprocess
    spec = classifier.spec
    info = spec.info or {}
    out = config.output_path
    versions = {"sparkdl": __version__, "torch": torch.__version__}
    if config.format == "onnx":
        import onnx

        versions["onnx"] = onnx.__version__
    return {
        "format": EXPORT_FORMAT,
        "file": out.name,
        "file_format": config.format,
        "opset": config.onnx_opset,
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["batch", 3, pre.crop, pre.crop], "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", spec.n_classes],
                   "meaning": "softmax probabilities; column i is labels[i]"},  # fmt: skip
        "labels": list(spec.labels),
        "preprocessing": {
            **pre.to_json(),
            "layout": "NCHW",
            "dtype": "float32",
            "jpeg_draft": True,
            "steps": [
                "decode the image; for a JPEG first call PIL's img.draft('RGB', (resize, resize)) (a reduced-scale "
                "decode whose shorter side stays >= resize: what sparkdl trained on)",
                "convert to RGB",
                "resize with PIL Image.BILINEAR to (max(crop, round(w * s)), max(crop, round(h * s))), "
                "s = resize / min(w, h) (shorter side -> resize), unless that is the size already",
                "center-crop crop x crop at left = (W - crop) // 2, top = (H - crop) // 2",
                "pixels as float32 0..255 in channel_order (BGR: reverse the RGB channels)",
                "per channel: (pixel * scale - mean) / std",
                "HWC -> CHW; stack the images into N x 3 x crop x crop float32",
            ],
        },
        "model_sha256": spec.model_sha256,
        "model": str(config.model),
        "backbone": info.get("backbone", {"name": spec.backbone.name}),
        "backbone_carried": info.get("carried"),
        "head": info.get("head"),
        "metrics": info.get("metrics", {}),
        "exported_by": versions,
    }


def _metadata_props(description: dict) -> dict[str, str]:
    """ONNX ``metadata_props`` (string -> string): labels and preprocessing on their own, and the whole record."""
    return {
        "sparkdl.format": EXPORT_FORMAT,
        "labels": json.dumps(description["labels"]),
        "preprocessing": json.dumps(description["preprocessing"]),
        "model_sha256": description["model_sha256"],
        "sparkdl.export": json.dumps(description, sort_keys=True),
    }


# -- writing and checking ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_exporter_warnings():
    """torch's deprecation notices for the TorchScript-based exporter / jit, and the exporter's note that it cannot
    constant-fold strided slices (correct output either way); other warnings (e.g. TracerWarning) stay."""
    with warnings.catch_warnings():
        for pattern in (r".*legacy TorchScript-based ONNX export", r".*feature will be removed", r"Constant folding",
                        r".*torch\.jit\.\w+` is deprecated"):  # fmt: skip
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _write_onnx(net, example, path: Path, opset: int, description: dict) -> None:
    import onnx
    import torch

    with _quiet_exporter_warnings(), torch.no_grad():
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})  # fmt: skip
    model = onnx.load(str(path))
    for key, value in _metadata_props(description).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (f"sparkdl model {description['model_sha256'][:16]}: preprocessed images "
                        f"{description['input']['shape']} -> softmax over {len(description['labels'])} labels; "
                        f"labels and preprocessing in metadata_props and {description['file']}.json")  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _write_torchscript(net, example, path: Path, description: dict) -> None:
    import torch

    with _quiet_exporter_warnings():
        with torch.no_grad():
            traced = torch.jit.trace(net, example, check_trace=False)  # checked below on another batch size
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(description, sort_keys=True)})


def _run_exported(path: Path, fmt: str, batch: np.ndarray) -> tuple[np.ndarray, str] | None:
    """The written file's output on ``batch`` and what ran it; None when onnxruntime is not installed."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0], f"onnxruntime {ort.__version__}"
    import torch

    with _quiet_exporter_warnings():
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(batch)).numpy(), "torch.jit.load"


def _batch(n: int, crop: int, seed: int) -> np.ndarray:
    """Preprocessed-looking input (roughly zero mean, unit scale), seeded."""
    import numpy as np  # noqa: F811

    return np.random.default_rng(seed).standard_normal((n, 3, crop, crop), dtype=np.float32)


def export_model(config: ExportConfig, spark=None, progress: Callable[[str], None] | None = None) -> ExportResult:
    """Write ``config.output`` and its sidecar; see the module docstring. ``spark``: only to copy a bundle from a
    Hadoop URI (else the active session, if any)."""
    import numpy as np  # noqa: F811
    import torch

    from sparkdl.featurize.weights import file_digest
    from sparkdl.infer.classifier import ImageClassifier

    say = progress or (lambda _message: None)
    start = time.perf_counter()
    if config.format == "onnx":
        _require_onnx()
    _check_outputs(config)
    say(f"loading the model {config.model}")
    classifier = ImageClassifier.load(config.model, spark=spark)
    net = classifier.network()
    crop = classifier.preprocess.crop
    description = describe(classifier, config)
    # what the file computes: the fp32 network, whatever precision the bundle's features were computed in
    description["numerics"] = {"file": "fp32", "bundle": classifier.spec.backbone.numerics.to_json()}
    out, side = config.output_path, config.sidecar_path
    out.parent.mkdir(parents=True, exist_ok=True)
    partial, side_partial = out.with_name(out.name + ".partial"), side.with_name(side.name + ".partial")
    try:
        say(f"exporting {description['backbone'].get('name')} + head ({classifier.spec.n_classes} classes) as "
            f"{config.format}{f' (opset {config.onnx_opset})' if config.onnx_opset else ''}")  # fmt: skip
        example = torch.from_numpy(_batch(_TRACE_BATCH, crop, seed=0))
        if config.format == "onnx":
            _write_onnx(net, example, partial, config.onnx_opset, description)
        else:
            _write_torchscript(net, example, partial, description)
        check = _batch(_CHECK_BATCH, crop, seed=1)
        ran = _run_exported(partial, config.format, check)
        diff = None
        if ran is None:
            say("onnxruntime is not installed: the exported file was not run (pip install onnxruntime to check it)")
        else:
            got, runner = ran
            with torch.inference_mode():  # the fp32 network written (the bundle's backbone may compute in bf16)
                expected = net(torch.from_numpy(check)).numpy()
            diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
            if not diff <= TOLERANCE:
                raise DataError(f"the exported {config.format} file disagrees with the model: max |difference| {diff:.3g} "
                                f"> {TOLERANCE} on a batch of {_CHECK_BATCH} ({runner}); nothing was written")  # fmt: skip
        sha = file_digest(partial)
        description["file_sha256"] = sha
        description["checked"] = {"with": ran[1] if ran else None, "batch": _CHECK_BATCH, "max_abs_diff": diff,
                                  "tolerance": TOLERANCE}  # fmt: skip
        side_partial.write_text(json.dumps(description, indent=2) + "\n")
        os.replace(partial, out)  # the file first: a crash in between leaves a sidecar whose file_sha256 disagrees
        os.replace(side_partial, side)
    except BaseException:
        partial.unlink(missing_ok=True)
        side_partial.unlink(missing_ok=True)
        raise
    say(f"wrote {out} and {side.name}")
    return ExportResult(
        output=str(out),
        sidecar=str(side),
        format=config.format,
        opset=config.onnx_opset,
        bytes=out.stat().st_size,
        file_sha256=sha,
        model_sha256=classifier.model_sha256,
        labels=tuple(classifier.labels),
        input_shape=tuple(description["input"]["shape"]),
        output_shape=tuple(description["output"]["shape"]),
        checked_with=ran[1] if ran else None,
        max_abs_diff=diff,
        seconds=time.perf_counter() - start,
    )
