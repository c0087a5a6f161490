"""Ingest on real Spark local[2] over a generated Caltech-shaped tree with bad files."""
import hashlib
import json

import pytest

from datagen import CLASSES, jpeg_bytes, make_caltech_tree
from sparkdl.config import IngestConfig
from sparkdl.data.images import assign_split, ingest_images
from sparkdl.errors import DataError

pytestmark = pytest.mark.spark


def _by_rel(spark, uri, root):
    prefix = "file:" + str(root) + "/"
    rows = spark.read.parquet(uri).collect()
    return {r["path"][len(prefix):]: r for r in rows}


def test_counts_rejects_labels(spark, caltech, ingested):
    assert ingested.rows_in == len(caltech["good"]) + len(caltech["bad"]) == 21
    assert ingested.rows_out == 18
    assert ingested.rejects == {"corrupt_image": 1, "empty_file": 1, "not_an_image": 1}
    assert ingested.labels == ("ak47", "american-flag", "backpack")
    assert ingested.label_source == "numeric_prefix"
    assert ingested.class_counts == {"ak47": 6, "american-flag": 6, "backpack": 6}
    assert sum(ingested.split_counts.values()) == 18

    df = spark.read.parquet(ingested.output_uri)
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("path", "string"), ("label", "string"), ("label_index", "int"), ("split", "string"), ("image", "binary"),
        ("sha256", "string"),
    ]
    rows = _by_rel(spark, ingested.output_uri, caltech["root"])
    assert sorted(rows) == caltech["good"]
    for rel, row in rows.items():
        folder = rel.split("/")[0]
        assert row["label_index"] == CLASSES.index(folder)
        assert row["label"] == folder.split(".", 1)[1]
        assert row["split"] == assign_split(rel, 42, (0.7, 0.15, 0.15))
        assert bytes(row["image"]) == (caltech["root"] / rel).read_bytes()
        assert row["sha256"] == hashlib.sha256(bytes(row["image"])).hexdigest()

    rejects = spark.read.parquet(ingested.rejects_uri).collect()
    prefix = "file:" + str(caltech["root"]) + "/"
    assert {r["path"][len(prefix):]: r["reason"] for r in rejects} == caltech["bad"]
    assert {r["stage"] for r in rejects} == {"ingest"}
    assert all(r["detail"] for r in rejects)

    meta = json.loads(open(ingested.meta_uri).read())
    assert meta["labels"] == ["ak47", "american-flag", "backpack"]
    assert meta["class_folders"] == list(CLASSES)
    assert meta["rejects"] == ingested.rejects
    assert meta["rows_in"] == 21 and meta["rows_out"] == 18


def test_split_stable_across_runs_and_partitionings(spark, caltech, ingested, tmp_path):
    reference = {rel: (r["split"], r["label_index"]) for rel, r in _by_rel(spark, ingested.output_uri, caltech["root"]).items()}
    for n in (1, 3):
        out = tmp_path / f"p{n}" / "images.parquet"
        result = ingest_images(
            spark,
            IngestConfig(images_uri=str(caltech["root"]), output_uri=str(out), partitions=n, max_reject_fraction=0.2),
        )
        assert result.rejects == ingested.rejects
        got = {rel: (r["split"], r["label_index"]) for rel, r in _by_rel(spark, str(out), caltech["root"]).items()}
        assert got == reference


def test_too_many_rejects_fail_and_write_no_table(spark, caltech, tmp_path):
    out = tmp_path / "images.parquet"
    with pytest.raises(DataError) as info:
        ingest_images(spark, IngestConfig(images_uri=str(caltech["root"]), output_uri=str(out)))
    msg = str(info.value)
    assert "3 of 21 rows rejected (14.29%) > max-reject-fraction 1.00%" in msg
    assert "corrupt_image=1, empty_file=1, not_an_image=1" in msg
    assert "images.rejects.parquet" in msg
    assert not out.exists()
    assert spark.read.parquet(str(tmp_path / "images.rejects.parquet")).count() == 3


def test_existing_output_and_missing_input_fail_before_work(spark, caltech, ingested, tmp_path):
    with pytest.raises(DataError, match="already exists: pass --overwrite"):
        ingest_images(spark, IngestConfig(images_uri=str(caltech["root"]), output_uri=ingested.output_uri))
    with pytest.raises(DataError, match="does not exist"):
        ingest_images(spark, IngestConfig(images_uri=str(tmp_path / "nope"), output_uri=str(tmp_path / "o.parquet")))


def test_files_outside_class_folders_and_plain_names(spark, tmp_path):
    root = tmp_path / "flowers"
    for name in ("tulip", "daisy"):
        (root / name).mkdir(parents=True)
        for j in range(3):
            (root / name / f"{j}.jpg").write_bytes(jpeg_bytes(j + (10 if name == "daisy" else 0)))
    (root / "daisy" / "nested").mkdir()
    (root / "daisy" / "nested" / "deep.jpg").write_bytes(jpeg_bytes(77))
    (root / "stray.jpg").write_bytes(jpeg_bytes(78))
    result = ingest_images(
        spark, IngestConfig(images_uri=str(root), output_uri=str(tmp_path / "i.parquet"), max_reject_fraction=0.2)
    )
    assert result.labels == ("daisy", "tulip")
    assert result.label_source == "sorted_names"
    assert result.rejects == {"not_in_class_folder": 1}
    assert result.class_counts == {"daisy": 4, "tulip": 3}  # nested files belong to their top-level class folder


def test_only_bad_files_everywhere_is_a_clear_error(spark, tmp_path):
    tree = make_caltech_tree(tmp_path / "t", per_class=0)
    with pytest.raises(DataError, match="3 of 3 rows rejected"):
        ingest_images(spark, IngestConfig(images_uri=str(tree["root"]), output_uri=str(tmp_path / "o.parquet")))
