"""Test data made by the tests: Caltech-shaped image trees with known bad files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("001.ak47", "002.american-flag", "003.backpack")


def jpeg_bytes(seed: int, size: tuple[int, int] = (48, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    h, w = size
    # smooth colour gradients plus noise: compresses like a photo, differs per seed
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (seed % 7 + 1)) % 256, (yy * (seed % 5 + 2)) % 256, ((xx + yy) * 3) % 256], axis=-1)
    img = np.clip(base + rng.integers(-20, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_caltech_tree(root: Path, per_class: int = 6, bad_files: bool = True) -> dict:
    """``root/256_ObjectCategories/<NNN.name>/<NNN_XXXX>.jpg`` plus (optionally) a corrupt JPEG, a text file and an
    empty file. Returns what the tree holds."""
    top = root / "256_ObjectCategories"
    good = []
    for ci, folder in enumerate(CLASSES):
        (top / folder).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            name = f"{ci + 1:03d}_{j + 1:04d}.jpg"
            (top / folder / name).write_bytes(jpeg_bytes(seed=ci * 1000 + j))
            good.append(f"{folder}/{name}")
    bad = {}
    if bad_files:
        whole = jpeg_bytes(seed=99999, size=(120, 160))
        (top / CLASSES[0] / "001_9999.jpg").write_bytes(whole[: len(whole) // 3])
        (top / CLASSES[1] / "notes.txt").write_text("not an image\n")
        (top / CLASSES[2] / "003_0000.jpg").write_bytes(b"")
        bad = {
            f"{CLASSES[0]}/001_9999.jpg": "corrupt_image",
            f"{CLASSES[1]}/notes.txt": "not_an_image",
            f"{CLASSES[2]}/003_0000.jpg": "empty_file",
        }
    return {"root": top, "good": sorted(good), "bad": bad}


def make_features_table(spark, uri: str, n: int, dim: int, n_classes: int, seed: int = 0, split_counts=None,
                        noise: float = 1.0) -> dict:  # fmt: skip
    """A features table (+ meta) of Gaussian class clusters: learnable, deterministic. ``split_counts`` maps split ->
    rows (default: all ``n`` rows in train); ``noise`` is the clusters' standard deviation (centers: 2)."""
    from sparkdl.data import tables

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2.0, size=(n_classes, dim))
    split_counts = split_counts or {"train": n}
    rows = []
    i = 0
    for split, count in split_counts.items():
        for _ in range(count):
            label = int(rng.integers(0, n_classes))
            x = centers[label] + rng.normal(0, noise, size=dim)
            rows.append((f"file:/gen/c{label}/{i:05d}.jpg", f"class{label}", label, split, [float(v) for v in x.astype(np.float32)]))
            i += 1
    df = spark.createDataFrame(rows, "path string, label string, label_index int, split string, features array<float>")
    df.write.mode("overwrite").parquet(uri)
    tables.write_meta(spark, uri, {"format": "sparkdl.features/1", "labels": [f"class{c}" for c in range(n_classes)],
                                   "feature_dim": dim, "backbone": {"name": "synthetic", "feature_dim": dim}})  # fmt: skip
    return {"uri": uri, "rows": rows}


def make_wide_features_table(directory: Path, per_class: int, dim: int = 4096, n_classes: int = 257,
                             seed: int = 0) -> str:  # fmt: skip
    """A Caltech-256-shaped features table written with pyarrow (no Python rows through Spark: 4096-d is wide):
    post-ReLU class clusters, all rows in ``train``. Returns the table's local path (its meta beside it)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (n_classes, 64)).astype(np.float32)
    layer = (rng.normal(0, 1, (64, dim)) / 8).astype(np.float32)
    labels = np.repeat(np.arange(n_classes), per_class)
    x = np.maximum((centers[labels] + rng.normal(0, 1.0, (len(labels), 64)).astype(np.float32)) @ layer, 0)
    table = Path(directory) / "wide.parquet"
    table.mkdir(parents=True)
    feats = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, dim, dtype=np.int32)), pa.array(x.reshape(-1)))
    pq.write_table(pa.table({"path": [f"file:/gen/{c}/{i:05d}.jpg" for i, c in enumerate(labels)],
                             "label": [f"class{c}" for c in labels], "label_index": pa.array(labels.astype(np.int32)),
                             "split": ["train"] * len(labels), "features": feats}), table / "part-00000.parquet")  # fmt: skip
    (Path(directory) / "wide.meta.json").write_text(json.dumps({
        "format": "sparkdl.features/1", "labels": [f"class{c}" for c in range(n_classes)], "feature_dim": dim,
        "backbone": {"name": "synthetic", "feature_dim": dim}}))  # fmt: skip
    return str(table)


ODD_NAMES = ("a b.jpg", "100%.jpg", "p%20q.jpg", "#1.jpg", "c,d.jpg", "é.jpg", "日本.jpg", "[x]{y}?.jpg")
ODD_CLASSES = ("cat a", "dog%20", "#é 日本")


def make_odd_names_tree(root: Path, classes: tuple[str, ...] = ODD_CLASSES, names: tuple[str, ...] = ODD_NAMES) -> dict:
    """``root/<class>/<name>`` with names Hadoop percent-escapes in URIs (space, ``%``, a literal ``%20``, ``#``, ``,``,
    non-ASCII, glob characters), each a distinct JPEG, plus one zero-byte file. Returns the root, the good files'
    relative paths and the empty file's."""
    good = []
    for ci, folder in enumerate(classes):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for j, name in enumerate(names):
            (root / folder / name).write_bytes(jpeg_bytes(seed=500 + ci * 100 + j))
            good.append(f"{folder}/{name}")
    empty = f"{classes[0]}/zero bytes %.jpg"
    (root / empty).write_bytes(b"")
    return {"root": root, "good": sorted(good), "empty": empty}


def tiny_weights(path: Path) -> Path:
    """A weights file for the ``tiny`` backbone that is not its seeded init (x 1.5)."""
    import torch

    from sparkdl.featurize.backbones import load_backbone

    torch.save({k: v * 1.5 for k, v in load_backbone("tiny").module.state_dict().items()}, path)
    return path


def make_bundle(directory: Path, backbone: str = "tiny", labels=("ak47", "american-flag", "backpack"), seed: int = 0,
                hidden: tuple[int, ...] = (), weights: Path | None = None, embed: bool = True) -> Path:  # fmt: skip
    """A self-contained model bundle without Spark: a seeded head on ``backbone`` (``tiny``: seeded weights;
    ``efficientnet_lite0``: the embedded package's real weights; ``weights``: a user's weights file, stored in the
    bundle, or referenced with ``embed=False``), carried the way `sparkdl train` carries it."""
    from sparkdl.bundle import ModelBundle
    from sparkdl.config import HeadConfig
    from sparkdl.featurize.backbones import check_backbone
    from sparkdl.featurize.carry import carry_backbone
    from sparkdl.model import HeadSpec, build_head

    from sparkdl.featurize.weights import file_digest

    info = check_backbone(backbone, weights=weights)
    if weights is not None:
        info = {**info, "weights": str(weights), "weights_sha256": file_digest(weights)}
    carried, file = carry_backbone(None, info, embed, Path(directory).parent)
    config = HeadConfig(kind="mlp" if hidden else "softmax", hidden=tuple(hidden))
    head = build_head(config, info["feature_dim"], len(labels), seed=seed)
    spec = HeadSpec.from_module(config, info["feature_dim"], len(labels), head)
    bundle = ModelBundle(head=spec, labels=list(labels), backbone={**info, "carried": carried},
                         attachments={file.name: file} if file else {})  # fmt: skip
    bundle.save(directory)
    return Path(directory)
