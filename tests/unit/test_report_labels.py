"""`sparkdl report` draws class labels as plain text: labels that look like matplotlib mathtext do not crash it."""
import pytest

from sparkdl.bundle import ModelBundle
from sparkdl.config import HeadConfig
from sparkdl.report import write_report
from sparkdl.model import HeadSpec, build_head

LABELS = ["$\\frac{$", "a$b$c", "50%_\n"]


@pytest.fixture
def bundle_dir(tmp_path):
    n = len(LABELS)
    split = {"n": 6, "accuracy": 0.5, "top5": 1.0, "macro_precision": 0.5, "macro_recall": 0.5, "macro_f1": 0.5,
             "confusion": [[2, 0, 0], [1, 1, 0], [0, 2, 0]]}  # fmt: skip
    bundle = ModelBundle(
        head=HeadSpec.from_module(HeadConfig(), 4, n, build_head(HeadConfig(), 4, n, seed=0)),
        labels=LABELS,
        backbone={"name": "synthetic"},
        training={"epochs": 1},
        metrics={"test": split, "best_epoch": 0, "epochs_run": 1, "transport_rejected": 0},
        events=[{"type": "round", "iteration": 1, "loss": 1.0, "phases": {"worker_fit": 0.01}},
                {"type": "epoch", "epoch": 0, "train_loss": 1.0, "valid_accuracy": 0.5}],  # fmt: skip
    )
    return bundle.save(tmp_path / "model")


def test_mathtext_like_labels_render_as_plain_text(bundle_dir):
    page = write_report(bundle_dir)
    assert (page.parent / "confusion.png").stat().st_size > 0
    assert "transport_rejected&quot;: 0" in page.read_text()  # refused connection attempts are on the page
