"""Ingest of trees Spark's own listing gets wrong: file names Hadoop escapes, hidden class folders, symlink loops."""
import json
import os

import pytest

from datagen import jpeg_bytes, make_odd_names_tree
from sparkdl.config import IngestConfig
from sparkdl.data.images import assign_split, ingest_images

pytestmark = pytest.mark.spark

SPLIT = (0.7, 0.15, 0.15)


def _ingest(spark, root, out, **kwargs):
    return ingest_images(spark, IngestConfig(images_uri=str(root), output_uri=str(out), **kwargs))


def _images(folder, n, seed):
    folder.mkdir(parents=True, exist_ok=True)
    for j in range(n):
        (folder / f"{j}.jpg").write_bytes(jpeg_bytes(seed + j))


def test_odd_names_and_one_empty_file_give_exactly_one_reject(spark, tmp_path):
    tree = make_odd_names_tree(tmp_path / "odd tree")
    root, prefix = tree["root"], "file:" + str(tree["root"]) + "/"
    result = _ingest(spark, root, tmp_path / "images.parquet", max_reject_fraction=0.05)

    assert result.rejects == {"empty_file": 1}
    assert (result.rows_in, result.rows_out) == (len(tree["good"]) + 1, len(tree["good"]))
    rows = spark.read.parquet(result.output_uri).collect()
    assert sorted(r["path"] for r in rows) == [prefix + rel for rel in tree["good"]]  # each once, the reader's form
    for row in rows:
        rel = row["path"][len(prefix):]
        assert row["label"] == rel.split("/")[0]
        assert row["split"] == assign_split(rel, 42, SPLIT)
        assert bytes(row["image"]) == (root / rel).read_bytes()
    rejects = spark.read.parquet(result.rejects_uri).collect()
    assert [(r["path"], r["reason"]) for r in rejects] == [(prefix + tree["empty"], "empty_file")]


def test_spark_listing_is_compared_in_the_readers_form(spark, tmp_path):
    """The path other file systems take (Spark's binaryFile lists): ``inputFiles()`` escapes names, the rows do not."""
    from sparkdl.data.images import (
        VALIDATED_SCHEMA, _unread_files, _validate_fn, read_images, reader_form, spark_listed_files,
    )

    assert reader_form("file:///d/a%20b/%25%2520%23%C3%A9.jpg") == "file:/d/a b/%%20#é.jpg"
    assert reader_form("hdfs://nn:9000/r/a%20b/日本.jpg") == "hdfs://nn:9000/r/a b/日本.jpg"
    tree = make_odd_names_tree(tmp_path / "odd tree")
    root = "file:" + str(tree["root"])
    prefix = root + "/"
    raw = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(root)
    listed = spark_listed_files(raw)
    assert sorted(listed) == sorted(prefix + rel for rel in [*tree["good"], tree["empty"]])

    validated = raw.select("path", "content").mapInArrow(_validate_fn(root, 42, SPLIT), VALIDATED_SCHEMA)
    unread = _unread_files(spark, validated, listed, root).collect()
    assert [(r["path"], r["rel_path"], r["reject_reason"]) for r in unread] == [
        (prefix + tree["empty"], tree["empty"], "empty_file")
    ]
    # the same relative path and split whichever way the file was listed (Spark's listing, the driver's walk)
    walked = read_images(spark, root).select("path", "content").mapInArrow(
        _validate_fn(root, 42, SPLIT), VALIDATED_SCHEMA
    )
    by_spark = {r["path"]: (r["rel_path"], r["split"]) for r in validated.collect()}
    by_walk = {r["path"]: (r["rel_path"], r["split"]) for r in walked.collect()}
    assert by_walk == {**by_spark, prefix + tree["empty"]: (tree["empty"], assign_split(tree["empty"], 42, SPLIT))}


def test_hidden_class_folders_are_counted(spark, tmp_path, capsys):
    from sparkdl.cli import main

    root = tmp_path / "hidden"
    _images(root / "cat", 3, 0)
    _images(root / "dog", 3, 10)
    _images(root / "_x", 2, 20)
    _images(root / ".x", 1, 30)
    _images(root / ".x" / "deeper", 1, 40)
    (root / ".DS_Store").write_bytes(b"\0")  # a hidden file, not a folder
    result = _ingest(spark, root, tmp_path / "images.parquet")

    assert (result.rows_in, result.rows_out, result.labels) == (6, 6, ("cat", "dog"))
    assert result.hidden_folders.names == (".x", "_x") and result.hidden_folders.files == 4
    meta = json.loads(open(result.meta_uri).read())
    assert meta["hidden_folders"] == {"count": 2, "names": [".x", "_x"], "files": 4}
    # other file systems count them through Hadoop's client: the same answer
    from sparkdl.data.images import _hidden_folders_hadoop, _hidden_name_rule

    assert _hidden_folders_hadoop(spark, "file:" + str(root), _hidden_name_rule(spark)) == result.hidden_folders

    assert main(["ingest", "--images", str(root), "--output", str(tmp_path / "cli.parquet")]) == 0
    summary = capsys.readouterr().out
    assert "hidden folders  2 not read (.x, _x: 4 files)" in summary


def test_symlink_loops_are_rejected_and_other_symlinks_followed(spark, tmp_path):
    root, outside = tmp_path / "tree", tmp_path / "outside"
    _images(root / "cat", 3, 0)
    _images(root / "dog", 3, 10)
    _images(outside / "birds", 2, 20)
    (outside / "x.jpg").write_bytes(jpeg_bytes(30))
    os.symlink(root, root / "cat" / "loop")  # a cycle
    os.symlink(root / "cat", root / "dog" / "cats")  # a directory of the tree reached a second time
    os.symlink(outside / "birds", root / "bird")  # a class folder outside the tree
    os.symlink(outside / "x.jpg", root / "dog" / "linked.jpg")  # a symlinked file
    os.symlink(root / "dog" / "self", root / "dog" / "self")  # ELOOP

    result = _ingest(spark, root, tmp_path / "images.parquet", max_reject_fraction=0.5)
    prefix = "file:" + str(root) + "/"
    assert result.rejects == {"symlink_loop": 3}
    assert result.class_counts == {"bird": 2, "cat": 3, "dog": 4}
    rows = spark.read.parquet(result.output_uri).collect()
    got = sorted((r["path"][len(prefix):], r["label"]) for r in rows)
    assert got == [("bird/0.jpg", "bird"), ("bird/1.jpg", "bird"), ("cat/0.jpg", "cat"), ("cat/1.jpg", "cat"),
                   ("cat/2.jpg", "cat"), ("dog/0.jpg", "dog"), ("dog/1.jpg", "dog"), ("dog/2.jpg", "dog"),
                   ("dog/linked.jpg", "dog")]  # fmt: skip
    assert bytes(next(r for r in rows if r["path"].endswith("linked.jpg"))["image"]) == (outside / "x.jpg").read_bytes()
    rejects = spark.read.parquet(result.rejects_uri).collect()
    assert sorted((r["path"], r["reason"]) for r in rejects) == [
        (prefix + "cat/loop", "symlink_loop"),
        (prefix + "dog/cats", "symlink_loop"),
        (prefix + "dog/self", "symlink_loop"),
    ]
    assert all(r["detail"] for r in rejects)
