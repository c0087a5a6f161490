"""Live progress of long stages on real Spark local[2]: `sparkdl featurize` draws a rich bar with rows done / total
when stderr is a terminal (a pseudo-terminal here) while `--json` keeps stdout one JSON document; `--quiet` prints
nothing; `sparkdl ingest` writes progress lines when stderr is no terminal; predict and the training layout report
through the progress they are given."""
from __future__ import annotations

import io
import json
import os
import re
import sys
import threading
from contextlib import contextmanager

import pytest

from datagen import make_bundle, make_features_table
from sparkdl.cli import main
from sparkdl.config import PredictConfig
from sparkdl.infer.predict import predict_images
from sparkdl.progress import Reporter
from sparkdl.train.driver import lay_out

pytestmark = pytest.mark.spark

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves


@contextmanager
def terminal_stderr(monkeypatch):
    """``sys.stderr`` is the slave side of a pseudo-terminal (``isatty()`` true); yields the bytes written to it."""
    master, slave = os.openpty()
    seen = bytearray()

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the slave side is closed
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    tty = os.fdopen(slave, "w", encoding="utf-8", buffering=1)
    try:
        with monkeypatch.context() as m:
            m.setattr(sys, "stderr", tty)
            yield seen
    finally:
        tty.close()
        reader.join(10)
        os.close(master)


def _featurize(ingested, out, *extra) -> list[str]:
    return ["featurize", "--input", ingested.output_uri, "--output", str(out), "--backbone", "tiny", "--json", *extra]


def _ingest(caltech, tmp_path) -> list[str]:
    out = tmp_path / "images.parquet"
    return ["ingest", "--images", str(caltech["root"]), "--output", str(out), "--max-reject-fraction", "0.2"]


def test_featurize_draws_a_bar_on_a_terminal_and_json_stays_valid(spark, ingested, tmp_path, capsys, monkeypatch):
    # a stage of several seconds in 8 tasks of 18 rows (144 images, Lite0 on torch): polls every 0.2 s see it half done
    from pyspark.sql import functions as F

    table = str(tmp_path / "images.parquet")
    images = spark.read.parquet(ingested.output_uri)
    copies = [images.withColumn("path", F.concat(F.col("path"), F.lit(f"#{i}"))) for i in range(8)]
    copies[0].unionByName(copies[1]).unionByName(copies[2]).unionByName(copies[3]).unionByName(copies[4]) \
        .unionByName(copies[5]).unionByName(copies[6]).unionByName(copies[7]).write.parquet(table)  # fmt: skip
    args = ["featurize", "--input", table, "--output", str(tmp_path / "f.parquet"), "--backbone", "efficientnet_lite0",
            "--runtime", "torch", "--max-rows-per-partition", "18", "--batch-size", "4", "--json", "--progress-every", "0.2"]  # fmt: skip
    with terminal_stderr(monkeypatch) as seen:
        assert main(args) == 0
    payload = json.loads(capsys.readouterr().out)  # stdout: only the summary
    assert payload["rows_out"] == 144
    screen = ANSI.sub("", seen.decode("utf-8")).replace("\r", "\n")
    assert "━" in screen  # rich's bar
    bar = [line for line in screen.splitlines() if line.startswith("featurize") and "rows" in line]
    assert bar and "144/144 rows" in bar[-1] and "rows/s" in bar[-1] and "done in" in bar[-1], screen
    assert any(re.search(r"\d+/144 rows .*ETA \S+ \[tasks [1-7]/8\]", line) for line in bar), screen  # while it ran
    assert "featurize: 144 images, 0 rejected" in screen  # the command's own lines still show, above the bar


def test_quiet_prints_nothing_on_a_terminal(spark, caltech, tmp_path, capsys, monkeypatch):
    with terminal_stderr(monkeypatch) as seen:
        assert main([*_ingest(caltech, tmp_path), "--json", "--progress-every", "0.01", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["rows_in"] == 21
    assert bytes(seen) == b""


def test_ingest_writes_lines_when_stderr_is_no_terminal(spark, caltech, tmp_path, capsys):
    assert main([*_ingest(caltech, tmp_path), "--json", "--progress-every", "0.01"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["rows_in"] == 21
    lines = [line.split("] ", 1)[1] for line in captured.err.splitlines() if "] ingest: " in line and "rows (" in line]
    line = re.compile(r"ingest: \d+/21 rows \(\d+%\), [\d.]+ rows/s, (ETA \S+( \[tasks \d+/\d+\])?|done in \S+)")
    assert lines and all(line.fullmatch(x) for x in lines), lines
    assert lines[-1].startswith("ingest: 21/21 rows (100%)") and "done in" in lines[-1]


def test_predict_and_the_training_layout_report(spark, ingested, tmp_path):
    stream = io.StringIO()
    report = Reporter(stream, interval_s=0.01, terminal=False)
    predict_images(spark, PredictConfig(model_uri=str(make_bundle(tmp_path / "model", "tiny")),
                                        output_uri=str(tmp_path / "p.parquet"), table_uri=ingested.output_uri),
                   progress=report)  # fmt: skip
    uri = str(tmp_path / "features.parquet")
    make_features_table(spark, uri, n=0, dim=4, n_classes=3, seed=2, split_counts={"train": 24, "valid": 8, "test": 8})
    info, shards = lay_out(spark.read.parquet(uri), 2, 3, with_valid=True, progress=report)
    shards.unpersist()
    lines = stream.getvalue().splitlines()
    predict = [x for x in lines if x.startswith("predict: ") and " rows (" in x]  # the stage's own lines too
    train = [x for x in lines if x.startswith("train: ")]
    assert predict[-1].startswith("predict: 18/18 rows (100%)") and "done in" in predict[-1]
    assert train[-1].startswith("train: 40/40 rows (100%)") and "done in" in train[-1]
