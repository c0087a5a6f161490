"""Metrics equal scikit-learn's on the same predictions."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support, top_k_accuracy_score

from sparkdl.evaluate import Metrics, metrics_from_logits, partial_counts


@pytest.mark.parametrize("seed, n, k", [(0, 500, 7), (1, 40, 12), (2, 300, 3)])
def test_metrics_equal_sklearn(seed, n, k):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[labels] * rng.integers(0, 2, size=(n, 1))
    m = metrics_from_logits(logits, labels, k)
    pred = logits.argmax(1)
    assert m.accuracy == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    p, r, f, _ = precision_recall_fscore_support(labels, pred, average="macro", zero_division=0)
    assert (m.macro_precision, m.macro_recall, m.macro_f1) == pytest.approx((p, r, f), abs=1e-12)
    pc, rc, fc, sc = precision_recall_fscore_support(labels, pred, labels=list(range(k)), zero_division=0)
    np.testing.assert_allclose(m.precision, pc, atol=1e-12)
    np.testing.assert_allclose(m.recall, rc, atol=1e-12)
    np.testing.assert_allclose(m.f1, fc, atol=1e-12)
    assert m.support == sc.tolist()
    assert m.confusion == confusion_matrix(labels, pred, labels=list(range(k))).tolist()
    assert m.top5 == pytest.approx(top_k_accuracy_score(labels, logits, k=min(5, k), labels=list(range(k))), abs=1e-12)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert m.loss == pytest.approx(log_loss(labels, probs, labels=list(range(k))), rel=1e-9)


def test_partial_counts_sum_to_the_whole():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, size=200)
    logits = rng.normal(size=(200, 6))
    whole = metrics_from_logits(logits, labels, 6)
    parts = [partial_counts(logits[i : i + 37], labels[i : i + 37], 6) for i in range(0, 200, 37)]
    summed = Metrics.from_counts(sum(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts))
    assert summed == whole


def test_macro_skips_classes_absent_from_labels_and_predictions():
    labels = np.array([0, 0, 1, 1])
    logits = np.eye(5)[[0, 1, 1, 1]]
    m = metrics_from_logits(logits, labels, 5)
    p, r, f, _ = precision_recall_fscore_support(labels, logits.argmax(1), average="macro", zero_division=0)
    assert (m.macro_precision, m.macro_recall, m.macro_f1) == pytest.approx((p, r, f))
