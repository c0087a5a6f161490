"""sparkdl: transfer learning on Apache Spark.

Importing the package has no side effects and does not import Spark or torch; the public names below are
resolved on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SparkDLError": "sparkdl.errors",
    "ConfigError": "sparkdl.errors",
    "DataError": "sparkdl.errors",
    "TransportError": "sparkdl.errors",
    "WorkerFailedError": "sparkdl.errors",
    "DivergedError": "sparkdl.errors",
    "SessionConfig": "sparkdl.config",
    "IngestConfig": "sparkdl.config",
    "FeaturizeConfig": "sparkdl.config",
    "build_session": "sparkdl.session",
    "ingest_images": "sparkdl.data.images",
    "IngestResult": "sparkdl.data.images",
    "read_images": "sparkdl.data.images",
    "featurize_images": "sparkdl.featurize.featurizer",
    "FeaturizeResult": "sparkdl.featurize.featurizer",
    "ImageFeaturizer": "sparkdl.featurize.featurizer",
    "read_features": "sparkdl.data.features",
    "get_backbone": "sparkdl.featurize.backbones",
    "list_backbones": "sparkdl.featurize.backbones",
    "HeadConfig": "sparkdl.config",
    "OptimizerConfig": "sparkdl.config",
    "TrainConfig": "sparkdl.config",
    "RunConfig": "sparkdl.config",
    "AveragingConfig": "sparkdl.config",
    "SharingConfig": "sparkdl.config",
    "ThresholdConfig": "sparkdl.config",
    "TrainingMaster": "sparkdl.train.driver",
    "TrainResult": "sparkdl.train.driver",
    "build_master": "sparkdl.train.driver",
    "ParameterAveragingTrainingMaster": "sparkdl.train.driver",
    "SharedGradientTrainingMaster": "sparkdl.train.driver",
    "build_head": "sparkdl.model",
    "train_head": "sparkdl.train.run",
    "evaluate_model": "sparkdl.train.run",
    "evaluate_head": "sparkdl.evaluate",
    "Metrics": "sparkdl.evaluate",
    "ModelBundle": "sparkdl.bundle",
    "HeadClassifier": "sparkdl.ml",
    "HeadClassifierModel": "sparkdl.ml",
    "ImageClassifierModel": "sparkdl.ml",
    "ImageClassifier": "sparkdl.infer.classifier",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sparkdl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
