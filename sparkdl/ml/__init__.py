"""Spark ML stages: ``ImageFeaturizer`` (images -> features), ``HeadClassifier`` / ``HeadClassifierModel`` (features
-> labels), ``ImageClassifierModel`` (images -> labels, from a self-contained bundle). Each is ``MLWritable`` /
``MLReadable`` in Spark's layout, so Pipelines, CrossValidator and TrainValidationSplit models save and load."""
from __future__ import annotations

from sparkdl.featurize.featurizer import ImageFeaturizer
from sparkdl.ml.head import HeadClassifier, HeadClassifierModel
from sparkdl.ml.image import ImageClassifierModel

__all__ = ["HeadClassifier", "HeadClassifierModel", "ImageClassifierModel", "ImageFeaturizer"]
