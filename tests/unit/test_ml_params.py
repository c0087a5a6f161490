"""The training options as Spark ML Params (``sparkdl.ml.train_params``): one Param per CLI training option and back, the
same defaults as the CLI and ``TrainConfig()``, values validated when set, and every Param reaching the TrainConfig.

No SparkSession: Params objects are plain Python."""
import argparse
import dataclasses
import math

import pytest
from pyspark import keyword_only
from pyspark.ml import Estimator

from sparkdl.cli.options import add_train_args, train_config
from sparkdl.config import (
    EXECUTIONS, MASTERS, OPTIMIZERS, SPARK_TRANSPORTS, AveragingConfig, HeadConfig, RunConfig, SharingConfig, ThresholdConfig,
    TrainConfig,
)  # fmt: skip
from sparkdl.errors import ConfigError
from sparkdl.ml.train_params import TRAINING_PARAM_NAMES, HasTrainingParams, training_defaults
from sparkdl.params import with_accessors

# CLI option dest -> Param name. A CLI training option added without a Param (or a Param without an option, other
# than those in PARAM_ONLY) fails test_every_cli_option_has_a_param_and_back.
CLI_TO_PARAM = {
    "training_master": "master",
    "workers": "workers",
    "epochs": "epochs",
    "batch_size_per_worker": "batchSizePerWorker",
    "averaging_frequency": "averagingFrequency",
    "execution": "execution",
    "aggregation_depth": "aggregationDepth",
    "tree_fanout": "treeFanout",
    "transport": "transport",
    "threshold": "threshold",
    "residual_clip": "residualClip",
    "staleness": "staleness",
    "head": "head",
    "dropout": "dropout",
    "optimizer": "optimizer",
    "lr": "lr",
    "momentum": "momentum",
    "average_updater_state": "averageUpdaterState",
    "early_stopping_patience": "earlyStoppingPatience",
    "seed": "seed",
    "score_every": "scoreEvery",
    "checkpoint_dir": "checkpointDir",
    "checkpoint_every": "checkpointEvery",
    "keep_checkpoints": "keepCheckpoints",
    "max_attempts": "maxAttempts",
    "min_workers": "minWorkers",
    "resume": "resume",
    "slot_wait": "slotWait",
}
PARAM_ONLY = {"weightDecay", "numClasses"}  # no CLI option: the CLI never sets weight decay; it counts classes itself


@with_accessors
class Trainer(Estimator, HasTrainingParams):
    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)

    def _fit(self, dataset):  # pragma: no cover - never fitted here
        raise NotImplementedError


def cli_parser(**kwargs) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sparkdl train")
    add_train_args(p, **kwargs)
    return p


def cli_actions(parser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def cap(name: str) -> str:
    return name[0].upper() + name[1:]


def param_names(obj) -> set[str]:
    return {p.name for p in obj.params}


# -- (a) one Param per CLI option and back -----------------------------------------------------------------------


def test_every_cli_option_has_a_param_and_back():
    dests = set(cli_actions(cli_parser()))
    assert dests == set(CLI_TO_PARAM), f"CLI options without a Param mapping: {dests - set(CLI_TO_PARAM)}; " \
        f"mapped but gone from the CLI: {set(CLI_TO_PARAM) - dests}"  # fmt: skip
    names = param_names(Trainer())
    assert names == set(CLI_TO_PARAM.values()) | PARAM_ONLY
    assert set(TRAINING_PARAM_NAMES) == names
    assert set(training_defaults()) == names - {"numClasses"}


def test_accessors_generated_for_every_param():
    t = Trainer()
    for name in param_names(t):
        assert callable(getattr(t, "set" + cap(name))), name
        assert getattr(t, "get" + cap(name))() == t.getOrDefault(name), name
    assert t.getSeed() == TrainConfig().seed  # pyspark's HasSeed getter, our default (not hash(class name))
    assert t.setSeed(7).getSeed() == 7


@pytest.mark.parametrize("dest, allowed", [("training_master", MASTERS), ("execution", EXECUTIONS),
                                           ("optimizer", OPTIMIZERS), ("transport", SPARK_TRANSPORTS)])  # fmt: skip
def test_cli_choices_are_the_params_allowed_values(dest, allowed):
    action = cli_actions(cli_parser())[dest]
    assert tuple(action.choices) == allowed
    name = CLI_TO_PARAM[dest]
    t = Trainer()
    for choice in action.choices:
        getattr(t, "set" + cap(name))(choice)
        assert t.getOrDefault(name) == choice
    with pytest.raises(ConfigError) as err:
        getattr(t, "set" + cap(name))("bogus")
    assert all(c in str(err.value) for c in allowed), str(err.value)


# -- (b) one set of defaults -----------------------------------------------------------------------------------------


def test_defaults_agree_across_trainconfig_params_and_cli():
    t = Trainer()
    cli_cfg = train_config(cli_parser().parse_args([]))
    assert cli_cfg == t.trainConfig() == TrainConfig()
    args = vars(cli_parser().parse_args([]))
    for dest, name in CLI_TO_PARAM.items():
        expected = t.getOrDefault(name)
        if name in ("earlyStoppingPatience", "minWorkers", "checkpointDir"):
            assert not expected and args[dest] is None  # 0 / "" ("off", "default") as a Param, absent as an option
        else:
            assert args[dest] == expected, name
    assert t.getNumClasses() == 0 and t.getWeightDecay() == TrainConfig().optimizer.weight_decay


def test_cli_help_shows_the_defaults():
    for dest, action in cli_actions(cli_parser()).items():
        d = action.default
        shown = ("on" if d else "off") if isinstance(d, bool) else "off" if d is None else str(d)
        assert f"default {shown}" in action.help or (dest == "optimizer" and action.help == f"default {shown}") or (
            dest == "score_every" and d == 0 and "per epoch only" in action.help) or (
            dest == "checkpoint_dir" and "default: <output>.checkpoints" in action.help), (dest, action.help)  # fmt: skip


def test_cli_epochs_override():
    p = cli_parser(epochs=3)
    assert p.parse_args([]).epochs == 3
    assert "(default 3)" in cli_actions(p)["epochs"].help
    assert cli_parser().parse_args([]).epochs == TrainConfig().epochs


# -- (c) bad values fail when set, saying what is allowed ------------------------------------------------------------

BAD = [
    ("optimizer", "adagrad", ["sgd", "nesterov", "adam"]),
    ("master", "x", ["averaging", "sharing"]),
    ("execution", "y", ["barrier", "rounds"]),
    ("transport", "inproc", ["grpc", "aeron"]),  # LocalLauncher only: Spark tasks cannot use it
    ("batchSizePerWorker", 0, [">= 1"]),
    ("workers", 0, [">= 1"]),
    ("epochs", 1.5, [">= 1"]),
    ("lr", 0, ["(0.0, inf)"]),
    ("lr", float("nan"), ["(0.0, inf)"]),
    ("lr", "0.1", ["(0.0, inf)"]),
    ("dropout", 1.0, ["[0.0, 1.0)"]),
    ("momentum", 1.0, ["[0.0, 1.0)"]),
    ("weightDecay", -1e-4, ["[0.0, inf)"]),
    ("head", "mlp:a", ["hidden sizes must be integers", "mlp:512,256"]),
    ("head", "mlp", ["needs hidden sizes"]),
    ("head", "linear", ["softmax", "mlp"]),
    ("threshold", "bogus", ["adaptive[:T0]", "fixed:T", "target-sparsity:S"]),
    ("threshold", "fixed:-1", ["positive"]),
    ("residualClip", "x:y", ["k:n", "5:5"]),
    ("residualClip", "0:5", ["k must be > 0"]),
    ("residualClip", "5:-1", [">= 0"]),
    ("staleness", -1, [">= 0"]),
    ("earlyStoppingPatience", -1, [">= 0"]),
    ("scoreEvery", -1, [">= 0"]),
    ("numClasses", -1, [">= 0"]),
    ("averageUpdaterState", "yes", ["True or False"]),
    ("aggregationDepth", None, [">= 1"]),  # pyspark would store a None unchecked
    ("optimizer", None, ["sgd", "nesterov", "adam"]),
]


@pytest.mark.parametrize("name, value, fragments", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_values_fail_when_set(name, value, fragments):
    t = Trainer()
    for attempt in (lambda: getattr(t, "set" + cap(name))(value), lambda: t.setParams(**{name: value}),
                    lambda: Trainer(**{name: value})):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            attempt()
        message = str(err.value)
        assert name in message and all(f in message for f in fragments), message
    assert not t.isSet(name)  # nothing stored


def test_bad_seed_fails_when_set():
    with pytest.raises(TypeError, match="seed"):
        Trainer(seed="x")


def test_cross_param_rules_are_checked_by_trainconfig():
    t = Trainer(optimizer="nesterov", momentum=0.0)
    with pytest.raises(ConfigError, match="nesterov needs momentum > 0"):
        t.trainConfig()
    assert t.setOptimizer("adam").trainConfig().optimizer.momentum == 0.0  # adam ignores momentum, as the CLI does


# -- (d) every Param reaches the TrainConfig ---------------------------------------------------------------------------

NON_DEFAULT = {
    "master": "sharing",
    "workers": 3,
    "epochs": 4,
    "batchSizePerWorker": 8,
    "averagingFrequency": 2,
    "execution": "rounds",
    "aggregationDepth": 3,
    "treeFanout": 4,
    "transport": "aeron",
    "threshold": "fixed:0.001",
    "residualClip": "2.5:3",
    "staleness": 1,
    "head": "mlp:16,8",
    "dropout": 0.25,
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.5,
    "weightDecay": 1e-4,
    "averageUpdaterState": False,
    "earlyStoppingPatience": 2,
    "seed": 7,
    "scoreEvery": 3,
    "checkpointDir": "hdfs://nn/ck",
    "checkpointEvery": 2,
    "keepCheckpoints": 3,
    "maxAttempts": 5,
    "minWorkers": 2,
    "resume": True,
    "slotWait": 5.0,
    "numClasses": 5,
}


def test_every_param_reaches_the_trainconfig():
    t = Trainer()
    assert set(NON_DEFAULT) == param_names(t)
    for name, value in NON_DEFAULT.items():
        assert value != t.getOrDefault(name), name  # so each one is seen to arrive
    t.setParams(**NON_DEFAULT)
    cfg = t.setExecution("barrier").trainConfig()  # rounds is averaging's execution: sharing refuses it
    assert (cfg.master, cfg.run.workers, cfg.epochs, cfg.batch_size_per_worker) == ("sharing", 3, 4, 8)
    assert (cfg.run.aggregation_depth, cfg.run.tree_fanout, cfg.run.transport.name) == (3, 4, "aeron")
    assert cfg.algorithm == SharingConfig(threshold=ThresholdConfig("fixed", 0.001), residual_clip_k=2.5,
                                          residual_clip_every=3, staleness=1)  # fmt: skip
    assert cfg.head == HeadConfig(kind="mlp", hidden=(16, 8), dropout=0.25)
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum, cfg.optimizer.weight_decay) == ("sgd", 0.05, 0.5, 1e-4)
    assert (cfg.early_stopping_patience, cfg.seed, cfg.score_every) == (2, 7, 3)
    assert cfg.run == RunConfig(workers=3, execution="barrier", transport=cfg.run.transport, tree_fanout=4,
                                aggregation_depth=3, checkpoint_dir="hdfs://nn/ck", checkpoint_every=2, keep_checkpoints=3,
                                max_attempts=5, min_workers=2, resume=True, slot_wait_s=5.0)  # fmt: skip
    cfg = t.setMaster("averaging").setExecution("rounds").trainConfig()  # the averaging Params reach an averaging config
    assert cfg.algorithm == AveragingConfig(frequency=2, average_updater_state=False) and cfg.run.execution == "rounds"
    assert t.getNumClasses() == 5  # not a TrainConfig field: the estimator's own


def test_params_and_cli_build_the_same_trainconfig():
    """The same non-default values through argv and through the Params: ``trainConfig`` mirrors ``train_config``."""
    actions = cli_actions(cli_parser())
    for optimizer in ("sgd", "adam"):
        values = {**NON_DEFAULT, "optimizer": optimizer, "execution": "barrier"}  # rounds is averaging's alone
        argv: list[str] = []
        for dest, name in CLI_TO_PARAM.items():
            action, value = actions[dest], values[name]
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(action.option_strings[0] if value else action.option_strings[1])
            else:
                argv += [action.option_strings[0], str(value)]
        expected = train_config(cli_parser().parse_args(argv))
        expected = dataclasses.replace(expected, optimizer=dataclasses.replace(expected.optimizer, weight_decay=values["weightDecay"]))
        assert Trainer(**values).trainConfig() == expected
    assert expected.optimizer.momentum == 0.0  # adam


def test_patience_zero_is_off():
    assert Trainer(earlyStoppingPatience=0).trainConfig().early_stopping_patience is None
    assert Trainer().trainConfig().early_stopping_patience is None


def test_converters_normalise_numbers():
    t = Trainer(workers=3.0, lr=1)
    assert t.getWorkers() == 3 and isinstance(t.getWorkers(), int)
    assert t.getLr() == 1.0 and isinstance(t.getLr(), float) and not math.isnan(t.getLr())


# -- (e) setParams refuses unknown names -----------------------------------------------------------------------------


def test_set_params_unknown_name_lists_the_known_ones():
    t = Trainer()
    with pytest.raises(ConfigError) as err:
        t.setParams(optimiser="adam")
    message = str(err.value)
    assert "optimiser" in message and "known:" in message
    assert all(name in message for name in param_names(t)), message
    with pytest.raises(ConfigError, match="optimiser"):
        Trainer(optimiser="adam")
