"""sparkdl.tracking without a store: flattening, what counts as a metric, failed log calls warn once and never stop
the stage, a missing mlflow names the extra, the CLI's URI rules."""
import argparse
import subprocess
import sys

import pytest

from sparkdl.cli.options import tracking_config
from sparkdl.errors import ConfigError
from sparkdl.tracking import MlflowRun, TrackingConfig, _numbers, flatten
from sparkdl.train.events import EpochEvent, RoundEvent

pytest.importorskip("mlflow", reason="the mlflow extra")


class FailingClient:
    def __init__(self):
        self.calls = 0

    def log_batch(self, *args, **kwargs):
        self.calls += 1
        raise ConnectionError("tracking server went away\nsecond line")


def test_flatten_and_numbers():
    flat = flatten({"a": 1, "b": {"c": 2.5, "d": {"e": "x"}}, "l": [1, 2]})
    assert flat == {"a": 1, "b.c": 2.5, "b.d.e": "x", "l": [1, 2]}
    assert _numbers({"i": 3, "f": 0.5, "t": True, "s": "x", "n": None, "nan": float("nan"), "l": [1]}) == {
        "i": 3.0, "f": 0.5, "t": 1.0}  # fmt: skip


def test_failed_log_calls_warn_once_and_the_stage_goes_on():
    said = []
    run = MlflowRun(TrackingConfig("sqlite:///unused.db"), "train", say=said.append)
    run.client, run.run_id = FailingClient(), "r1"
    listener = run.listener()
    for epoch in range(3):
        listener.on_round(RoundEvent(epoch=epoch, round=0, iteration=epoch + 1, loss=1.0, lr=0.1, examples=8, workers=2,
                                     message_bytes=100, tau=1e-3, sent_fraction=0.01))  # fmt: skip
        listener.on_epoch(EpochEvent(epoch=epoch, epochs=3, train_loss=1.0, examples=8, seconds=0.1,
                                     examples_per_second=80.0, tau=1e-3))  # fmt: skip
    assert run.client.calls == 3
    assert said == ["train: warning: MLflow metrics failed, the stage goes on: tracking server went away"]


def test_tracking_config_rules():
    def args(**kw):
        base = {"mlflow": False, "mlflow_uri": None, "mlflow_experiment": None, "mlflow_run_name": None}
        return argparse.Namespace(**{**base, **kw})

    assert tracking_config(args(), environ={"MLFLOW_TRACKING_URI": "http://x"}) is None  # not asked
    assert tracking_config(args(mlflow=True), environ={"MLFLOW_TRACKING_URI": "http://x"}) == TrackingConfig("http://x")
    got = tracking_config(args(mlflow_uri="sqlite:///a.db"), environ={"MLFLOW_EXPERIMENT_NAME": "e"})
    assert got == TrackingConfig("sqlite:///a.db", "e")  # --mlflow-uri implies --mlflow
    with pytest.raises(ConfigError, match="--mlflow needs a tracking URI"):
        tracking_config(args(mlflow=True), environ={})


def test_without_mlflow_installed_the_error_names_the_extra():
    code = ("import sys; sys.modules['mlflow'] = None\n"
            "from sparkdl.tracking import MlflowRun, TrackingConfig\n"
            "try:\n    MlflowRun(TrackingConfig('sqlite:///x.db'), 'train').__enter__()\n"
            "except Exception as e:\n    print(type(e).__name__, e)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "MissingExtraError --mlflow tracking needs mlflow, which is not installed: pip install 'sparkdl-torch[mlflow]'"
