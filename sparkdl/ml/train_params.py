"""The training options as Spark ML Params: :class:`HasTrainingParams`, one Param per ``sparkdl train`` option
(``--batch-size-per-worker`` is ``batchSizePerWorker``), plus ``weightDecay`` and ``numClasses``.

Each Param validates its value when it is set (``setOptimizer("adagrad")`` fails at once, naming the allowed values),
with the rules of ``sparkdl.config`` (its constants and parsers, not a copy of them). Defaults come from
:func:`training_defaults`, i.e. the config dataclasses' field defaults, which the CLI uses too.

    @with_accessors
    class MyEstimator(Estimator, HasTrainingParams):
        @keyword_only
        def __init__(self, **kwargs):
            super().__init__()
            self.setParams(**self._input_kwargs)

        def _fit(self, dataset):
            cfg = self.trainConfig()  # the TrainConfig ``sparkdl train`` would build from the same options
            ...

Conventions where a Param cannot say what the option says: ``earlyStoppingPatience`` 0 is "off" (the option's
absence, ``None`` in ``TrainConfig``); ``residualClip`` is the option's ``k:n`` string; ``numClasses`` 0 is "from the
labels" (max label + 1).
"""
from __future__ import annotations

from typing import Any

from pyspark.ml.param.shared import HasSeed

from sparkdl.config import (
    EXECUTIONS,
    MASTERS,
    OPTIMIZERS,
    SPARK_TRANSPORTS,
    HeadConfig,
    SharingConfig,
    ThresholdConfig,
    TrainConfig,
    training_defaults,
)
from sparkdl.params import boolean, checked_string, float_in, int_at_least, one_of, param

__all__ = ["HasTrainingParams", "training_defaults", "TRAINING_PARAM_NAMES"]


def _check_clip(spec: str) -> None:
    k, every = SharingConfig.parse_clip(spec)
    SharingConfig(residual_clip_k=k, residual_clip_every=every)  # its range checks


def _check_threshold(spec: str) -> None:
    ThresholdConfig.parse(spec)


class HasTrainingParams(HasSeed):
    """Mixin: the training options as Params (validated when set; defaults from :func:`training_defaults`) and
    :meth:`trainConfig`. ``seed`` is pyspark's shared ``HasSeed`` Param (``getSeed``), its default set to ours.
    Decorate the concrete class with ``sparkdl.params.with_accessors`` for ``setX``/``getX``/``setParams``."""

    master = param("master", f"training master: {' or '.join(MASTERS)} (averaging: parameter averaging; sharing: "
                   "threshold-quantized gradient sharing over a tree of workers)", one_of("master", MASTERS))  # fmt: skip
    workers = param("workers", "data-parallel workers", int_at_least("workers", 1))
    epochs = param("epochs", "epochs", int_at_least("epochs", 1))
    batchSizePerWorker = param("batchSizePerWorker", "minibatch per worker", int_at_least("batchSizePerWorker", 1))
    averagingFrequency = param("averagingFrequency", "minibatches between averagings", int_at_least("averagingFrequency", 1))
    execution = param("execution", f"{' or '.join(EXECUTIONS)} (barrier: the whole fit in one Spark barrier stage; "
                      "rounds: one Spark job per averaging round)", one_of("execution", EXECUTIONS))  # fmt: skip
    aggregationDepth = param("aggregationDepth", "treeAggregate depth (execution rounds)", int_at_least("aggregationDepth", 1))
    treeFanout = param("treeFanout", "children per worker in the tree workers sum over", int_at_least("treeFanout", 1))
    transport = param("transport", f"how barrier workers talk: {' or '.join(SPARK_TRANSPORTS)}",
                      one_of("transport", SPARK_TRANSPORTS))  # fmt: skip
    threshold = param("threshold", "sharing: adaptive[:T0], fixed:T or target-sparsity:S",
                      checked_string("threshold", _check_threshold,
                                     "adaptive[:T0], fixed:T or target-sparsity:S"))  # fmt: skip
    residualClip = param("residualClip", "sharing: clip the residual to +-k x tau every n steps, k:n (k:0 never)",
                         checked_string("residualClip", _check_clip, "k:n, e.g. 5:5"))  # fmt: skip
    staleness = param("staleness", "sharing: 0 synchronous and deterministic; k > 0 up to k steps ahead",
                      int_at_least("staleness", 0))  # fmt: skip
    head = param("head", "softmax or mlp:H1,H2,...", checked_string("head", HeadConfig.parse, "softmax or mlp:H1,H2,..."))
    dropout = param("dropout", "dropout after each hidden layer of an mlp head, in [0, 1)",
                    float_in("dropout", 0.0, 1.0, high_open=True))  # fmt: skip
    optimizer = param("optimizer", f"optimizer: {', '.join(OPTIMIZERS)}", one_of("optimizer", OPTIMIZERS))
    lr = param("lr", "learning rate, > 0", float_in("lr", 0.0, low_open=True))
    momentum = param("momentum", "momentum for sgd/nesterov, in [0, 1) (adam: not used)",
                     float_in("momentum", 0.0, 1.0, high_open=True))  # fmt: skip
    weightDecay = param("weightDecay", "L2 weight decay, >= 0", float_in("weightDecay", 0.0))
    averageUpdaterState = param("averageUpdaterState", "average the optimizer state (momentum, Adam moments) with "
                                "the parameters", boolean("averageUpdaterState"))  # fmt: skip
    earlyStoppingPatience = param("earlyStoppingPatience", "stop after N epochs without a better valid accuracy "
                                  "(0: off)", int_at_least("earlyStoppingPatience", 0))  # fmt: skip
    scoreEvery = param("scoreEvery", "report the training loss every N averaging rounds (0: per epoch only)",
                       int_at_least("scoreEvery", 0))  # fmt: skip
    checkpointDir = param("checkpointDir", "where checkpoints go, any Hadoop URI ('': no checkpoints)",
                          checked_string("checkpointDir", lambda s: None, "a path or Hadoop URI"))  # fmt: skip
    checkpointEvery = param("checkpointEvery", "epochs between checkpoints (0: none)", int_at_least("checkpointEvery", 0))
    keepCheckpoints = param("keepCheckpoints", "how many of the newest checkpoints to keep", int_at_least("keepCheckpoints", 1))
    maxAttempts = param("maxAttempts", "launch a failed barrier stage again from the latest checkpoint, up to this many "
                        "attempts in all", int_at_least("maxAttempts", 1))  # fmt: skip
    minWorkers = param("minWorkers", "elastic: go on with as few as this many workers when task slots are lost (0: off)",
                       int_at_least("minWorkers", 0))  # fmt: skip
    resume = param("resume", "continue from the latest checkpoint in checkpointDir", boolean("resume"))
    slotWait = param("slotWait", "after a failure, seconds to wait for lost task slots to come back", float_in("slotWait", 0.0))
    numClasses = param("numClasses", "classes (0: from the labels, max label + 1)", int_at_least("numClasses", 0))

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(numClasses=0, **training_defaults())

    def _set(self, **kwargs: Any):
        # pyspark stores None without converting it; a training Param has no "unset" value, so refuse it here
        for name, value in kwargs.items():
            if value is None and name in TRAINING_PARAM_NAMES:
                getattr(self, name).typeConverter(value)  # raises, naming what the Param takes
        return super()._set(**kwargs)

    def trainConfig(self) -> TrainConfig:
        """The TrainConfig these Params describe: what ``sparkdl train`` builds from the same options
        (``sparkdl.cli.options.train_config``; cross-Param rules, e.g. nesterov needs momentum > 0, are checked here)."""
        return TrainConfig.from_options({name: self.getOrDefault(name) for name in training_defaults()})


# every Param the mixin declares (``seed`` included)
TRAINING_PARAM_NAMES: tuple[str, ...] = tuple(training_defaults()) + ("numClasses",)
