"""Classification metrics computed per partition and summed: accuracy, top-5, per-class and macro precision /
recall / F1, confusion matrix, mean cross-entropy. Only confusion-matrix-sized objects reach the driver."""
from __future__ import annotations

import functools
import pickle
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from sparkdl.data.arrow import features_matrix
from sparkdl.errors import DataError
from sparkdl.session import job_description


@dataclass(frozen=True)
class Metrics:
    n: int
    accuracy: float
    top5: float
    loss: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows: true label index, columns: predicted

    @classmethod
    def from_counts(cls, confusion: np.ndarray, top5_hits: int, loss_sum: float) -> "Metrics":
        confusion = np.asarray(confusion, dtype=np.int64)
        n = int(confusion.sum())
        tp = np.diag(confusion).astype(np.float64)
        predicted = confusion.sum(axis=0).astype(np.float64)
        actual = confusion.sum(axis=1).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(predicted > 0, tp / predicted, 0.0)
            recall = np.where(actual > 0, tp / actual, 0.0)
            f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        # like scikit-learn's macro average: over the classes that occur in the labels or the predictions
        present = (predicted > 0) | (actual > 0)
        macro = (lambda v: float(v[present].mean()) if present.any() else 0.0)
        return cls(
            n=n,
            accuracy=float(tp.sum() / n) if n else 0.0,
            top5=float(top5_hits / n) if n else 0.0,
            loss=float(loss_sum / n) if n else 0.0,
            macro_precision=macro(precision),
            macro_recall=macro(recall),
            macro_f1=macro(f1),
            precision=[float(v) for v in precision],
            recall=[float(v) for v in recall],
            f1=[float(v) for v in f1],
            support=[int(v) for v in actual],
            confusion=confusion.tolist(),
        )

    def summary(self) -> dict:
        """The headline numbers (no per-class lists)."""
        return {k: getattr(self, k) for k in ("n", "accuracy", "top5", "loss", "macro_precision", "macro_recall", "macro_f1")}

    def to_json(self) -> dict:
        return {**self.summary(), "precision": self.precision, "recall": self.recall, "f1": self.f1,
                "support": self.support, "confusion": self.confusion}  # fmt: skip


def partial_counts(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, int, float]:
    """(confusion matrix, top-5 hits, summed cross-entropy) of one chunk of rows. Labels outside ``[0, n_classes)``
    are refused (numpy would count -1 as the last class)."""
    labels = labels.astype(np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    if len(labels) == 0:
        return confusion, 0, 0.0
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise DataError(f"label_index outside [0, {n_classes}) in {int(bad.sum())} rows (e.g. {int(labels[bad][0])}): "
                        "the labels do not match the model's classes")  # fmt: skip
    pred = logits.argmax(axis=1)
    np.add.at(confusion, (labels, pred), 1)
    k = min(5, n_classes)
    topk = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top5_hits = int((topk == labels[:, None]).any(axis=1).sum())
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss_sum = float(-log_probs[np.arange(len(labels)), labels].sum())
    return confusion, top5_hits, loss_sum


def metrics_from_logits(logits: np.ndarray, labels: np.ndarray, n_classes: int) -> Metrics:
    return Metrics.from_counts(*partial_counts(np.asarray(logits, dtype=np.float64), np.asarray(labels), n_classes))


def _evaluate_partition(batches, *, head_bc, n_classes, features_col, label_col):
    import pyarrow as pa
    import torch

    from sparkdl.model import predict_logits

    torch.set_num_threads(1)
    model = head_bc.value.build()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    top5, loss = 0, 0.0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        x = features_matrix(batch.column(features_col))
        y = batch.column(label_col).to_numpy(zero_copy_only=False)
        c, t, s = partial_counts(predict_logits(model, x).astype(np.float64), y, n_classes)
        confusion += c
        top5 += t
        loss += s
    yield pa.RecordBatch.from_pydict({"payload": [pickle.dumps((confusion, top5, loss))]})


def _described(spark, n_classes: int) -> AbstractContextManager:
    """The caller's job description when it set one (train's scoring, ``evaluate_model``), else
    ``sparkdl evaluate: a head of N classes``."""
    if spark.sparkContext.getLocalProperty("spark.job.description") is not None:
        return nullcontext()
    return job_description(spark, "evaluate", f"a head of {n_classes} classes")


def evaluate_head(df, head_spec, n_classes: int, features_col: str = "features", label_col: str = "label_index") -> Metrics:
    """Metrics of ``head_spec`` (a ``HeadSpec``: config + weights) on every row of ``df``, computed where the rows are.
    ``features_col`` may be ``array<float|double>`` or a Spark ML Vector. No validation here: ``evaluate_model`` runs
    ``validate_features`` first (labels outside ``[0, n_classes)`` still fail, in ``partial_counts``)."""
    from sparkdl.data.features import as_float_arrays

    df = as_float_arrays(df, features_col)
    spark = df.sparkSession
    head_bc = spark.sparkContext.broadcast(head_spec)
    try:
        fn = functools.partial(
            _evaluate_partition, head_bc=head_bc, n_classes=n_classes, features_col=features_col, label_col=label_col
        )
        with _described(spark, n_classes):
            rows = df.select(features_col, label_col).mapInArrow(fn, "payload binary").collect()
    finally:
        head_bc.destroy()
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    top5, loss = 0, 0.0
    for row in rows:
        c, t, s = pickle.loads(row["payload"])
        confusion += c
        top5 += t
        loss += s
    return Metrics.from_counts(confusion, top5, loss)
