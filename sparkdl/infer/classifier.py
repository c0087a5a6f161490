"""``ImageClassifier``: a model bundle (backbone + head) turning encoded image bytes into labels. Plain Python, no
Spark: ``sparkdl predict`` runs it inside executors, ``sparkdl serve`` behind HTTP, ``sparkdl export`` traces it.

Decoding is ingest's and featurize's (the same draft-size JPEG decode and preprocessing), so the classifier sees
exactly the features the head was trained on; an image that does not decode is a :class:`Reject` with ingest's
reason, never an exception and never a dropped row.
"""
from __future__ import annotations

import hashlib
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from sparkdl.bundle import ModelBundle
from sparkdl.data import hadoopfs
from sparkdl.data.decode import ImageDecodeError, decode_image
from sparkdl.errors import DataError
from sparkdl.featurize.carry import ResolvedBackbone, resolve_backbone, scratch_dir
from sparkdl.model import HeadSpec


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float
    top_k: tuple[tuple[str, float], ...]  # (label, probability), most probable first

    def to_json(self) -> dict:
        return {"label": self.label, "index": self.index, "probability": self.probability,
                "top_k": [{"label": lab, "probability": p} for lab, p in self.top_k]}  # fmt: skip


@dataclass(frozen=True)
class Reject:
    reason: str  # one of sparkdl.data.decode.REJECT_REASONS
    detail: str

    def to_json(self) -> dict:
        return {"reason": self.reason, "detail": self.detail}


Result = Union[Prediction, Reject]


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything an executor needs besides the backbone's weights file: small and picklable (broadcast)."""

    labels: tuple[str, ...]
    head: HeadSpec
    backbone: ResolvedBackbone
    model_sha256: str  # identity of the bundle: sha256 of config.json + head.safetensors
    info: dict = field(default_factory=dict)  # backbone record, metrics summary: for `GET /v1/model`

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def _model_sha256(directory: Path) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "head.safetensors"):
        h.update((directory / name).read_bytes())
    return h.hexdigest()


def spec_from_bundle_dir(directory: Path, spark=None, scratch: Path | None = None) -> ClassifierSpec:
    """Load and check a local bundle directory: config, head, the carried backbone (sha256) and their fit."""
    bundle = ModelBundle.load(directory)
    backbone = resolve_backbone(bundle.backbone, directory, spark=spark, scratch=scratch)
    if backbone.feature_dim != bundle.head.in_dim:
        raise DataError(f"{directory}: the head takes {bundle.head.in_dim}-d features but its backbone "
                        f"{backbone.name} gives {backbone.feature_dim}-d: the bundle is inconsistent; retrain it")  # fmt: skip
    summary = {s: {k: v for k, v in m.items() if k in ("n", "accuracy", "top5")}
               for s, m in bundle.metrics.items() if isinstance(m, dict) and "accuracy" in m}  # fmt: skip
    info = {"backbone": {k: v for k, v in bundle.backbone.items() if k != "carried"},
            "carried": bundle.backbone.get("carried", {}).get("kind"), "metrics": summary,
            "head": bundle.head.config.to_json(), "feature_dim": bundle.head.in_dim}  # fmt: skip
    return ClassifierSpec(tuple(bundle.labels), bundle.head, backbone, _model_sha256(directory), info)


def resolve_bundle(uri: str | Path, spark=None) -> tuple[ClassifierSpec, Path]:
    """Check a bundle (local directory or Hadoop URI) and find its backbone, without building the network:
    (spec, scratch directory). A remote bundle (and a referenced remote weights file) is copied into the scratch
    directory, which the caller removes when done with the spec; ``spark`` may be stopped afterwards."""
    from sparkdl.bundle import _need_spark, _resolve

    uri = _resolve(uri, spark)
    scratch = scratch_dir()
    try:
        if hadoopfs.is_local(uri):
            directory = hadoopfs.local_path(uri)
            if not (directory / "config.json").is_file():
                raise DataError(f"{directory} is not a sparkdl model bundle (no config.json); train one with `sparkdl train`")
        else:
            spark = _need_spark(spark, str(uri))
            directory = hadoopfs.copy_to_local(spark, str(uri), scratch / "model")
        return spec_from_bundle_dir(directory, spark=spark, scratch=scratch), scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


class ImageClassifier:
    """Backbone + head of a model bundle. ``predict(images)`` -> one :class:`Prediction` or :class:`Reject` each.

    Build with :meth:`load` (a bundle path or Hadoop URI) or from a :class:`ClassifierSpec` (executors). Not
    thread-safe: one per thread, or serialize calls (the model server batches requests into one thread)."""

    def __init__(self, spec: ClassifierSpec, weights: str | None = None) -> None:
        """``weights``: this process's copy of the backbone weights file (an executor's shipped copy), if any."""
        import torch

        self.spec = spec
        self.labels = list(spec.labels)
        self._backbone = spec.backbone.load(weights)
        self.preprocess = self._backbone.preprocess
        self._head = spec.head.build().eval()
        self._torch = torch

    @classmethod
    def load(cls, uri: str | Path, spark=None) -> "ImageClassifier":
        """Load a bundle from a local directory or a Hadoop URI (``spark`` or the active session reads it)."""
        spec, scratch = resolve_bundle(uri, spark)
        try:
            model = cls(spec)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        weakref.finalize(model, shutil.rmtree, scratch, True)  # a remote bundle's copy lives as long as the model
        return model

    @property
    def model_sha256(self) -> str:
        return self.spec.model_sha256

    def decode(self, data: bytes | bytearray | memoryview | dict | None) -> np.ndarray | Reject:
        """Encoded bytes or Spark's image struct (a dict) -> the backbone's CHW float32 input, or a Reject with
        ingest's reason."""
        try:
            return self.preprocess.to_array(decode_image(data, draft_size=self.preprocess.resize))
        except ImageDecodeError as exc:
            return Reject(exc.reason, exc.detail)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, crop, crop) preprocessed images -> (N, n_classes) float32 softmax probabilities."""
        torch = self._torch
        with torch.inference_mode():
            feats = self._backbone(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
            return torch.softmax(self._head(feats).float(), dim=1).numpy()

    def network(self):
        """What :meth:`probabilities` computes as one eval-mode ``torch.nn.Module`` sharing this classifier's
        weights: (N, 3, crop, crop) preprocessed float32 -> (N, n_classes) softmax probabilities (``sparkdl export``)."""
        nn = self._torch.nn
        return nn.Sequential(self._backbone.module, self._head, nn.Softmax(dim=1)).eval()

    def score(self, images: Sequence[bytes | bytearray | memoryview | dict | None]) -> tuple[np.ndarray, list[Reject | None]]:
        """(probabilities (N, n_classes) float32, zeros for an image that does not decode; each image's Reject or
        None). The decodable images go through the network in one batch."""
        decoded = [self.decode(img) for img in images]
        rejects = [d if isinstance(d, Reject) else None for d in decoded]
        probs = np.zeros((len(decoded), len(self.labels)), dtype=np.float32)
        good = [i for i, r in enumerate(rejects) if r is None]
        if good:
            probs[good] = self.probabilities(np.stack([decoded[i] for i in good]))
        return probs, rejects

    def predict(self, images: Sequence[bytes | bytearray | memoryview | dict | None], top_k: int = 5) -> list[Result]:
        """One result per image, in order; the decodable ones go through the network in one batch."""
        probs, rejects = self.score(images)
        return [r if r is not None else self.prediction(p, top_k) for p, r in zip(probs, rejects)]

    def prediction(self, probs: np.ndarray, top_k: int = 5) -> Prediction:
        k = max(1, min(int(top_k), len(self.labels)))
        order = np.argsort(-probs, kind="stable")[:k]
        top = tuple((self.labels[j], float(probs[j])) for j in order)
        return Prediction(top[0][0], int(order[0]), top[0][1], top)
