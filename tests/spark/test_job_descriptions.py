"""Spark UI job descriptions: every Spark job a stage starts belongs to the job group ``sparkdl-<stage>`` and is
described ``sparkdl <stage>: ...``; the thread's own group and description are back afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import pytest

from datagen import make_bundle, make_features_table
from sparkdl.config import AveragingConfig, IngestConfig, OptimizerConfig, PredictConfig, RunConfig, SharingConfig, TrainConfig
from sparkdl.data.images import ingest_images
from sparkdl.evaluate import evaluate_head
from sparkdl.infer.predict import predict_images
from sparkdl.model import HeadSpec, build_head
from sparkdl.train.driver import build_master
from sparkdl.train.run import evaluate_model, train_head

pytestmark = pytest.mark.spark

OUTER = ("tests-outer-group", "tests: the caller's own description")


@dataclass(frozen=True, order=True)
class Job:
    id: int
    group: str | None
    description: str | None


@dataclass
class Watch:
    jobs: list[Job] = field(default_factory=list)

    @property
    def descriptions(self) -> list[str | None]:
        return [j.description for j in self.jobs]


def _option(value) -> str | None:
    return value.get() if value.isDefined() else None


def all_jobs(spark) -> list[Job]:
    """Every job the status store holds (the listener bus drained first: it records jobs asynchronously)."""
    sc = spark.sparkContext._jsc.sc()
    sc.listenerBus().waitUntilEmpty()
    jobs = sc.statusStore().jobsList(None)
    found = []
    for i in range(jobs.size()):
        job = jobs.apply(i)
        found.append(Job(job.jobId(), _option(job.jobGroup()), _option(job.description())))
    return sorted(found)


@contextmanager
def stage_jobs(spark, stage: str, outer: tuple[str, str] | tuple[None, None] = OUTER) -> Iterator[Watch]:
    """The jobs started inside the block, checked: at least one, each in ``sparkdl-<stage>`` and described
    ``sparkdl <stage>: ...``, and the thread's group / description (``outer`` during the block) restored."""
    sc = spark.sparkContext
    last = max((j.id for j in all_jobs(spark)), default=-1)
    sc.setLocalProperty("spark.jobGroup.id", outer[0])
    sc.setLocalProperty("spark.job.description", outer[1])
    watch = Watch()
    try:
        yield watch
        assert (sc.getLocalProperty("spark.jobGroup.id"), sc.getLocalProperty("spark.job.description")) == outer
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    watch.jobs = [j for j in all_jobs(spark) if j.id > last]
    assert watch.jobs, f"the {stage} stage started no Spark job"
    assert {j.group for j in watch.jobs} == {f"sparkdl-{stage}"}
    undescribed = [j for j in watch.jobs if not (j.description or "").startswith(f"sparkdl {stage}: ")]
    assert not undescribed, undescribed
    assert set(sc.statusTracker().getJobIdsForGroup(f"sparkdl-{stage}")) >= {j.id for j in watch.jobs}


@pytest.fixture(scope="module")
def features(spark, tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("jobdesc") / "features.parquet")
    make_features_table(spark, uri, n=0, dim=4, n_classes=3, seed=2, split_counts={"train": 24, "valid": 8, "test": 8})
    return uri


def _config(execution: str = "barrier", **kw) -> TrainConfig:
    base = dict(run=RunConfig(workers=2, execution=execution), epochs=2, batch_size_per_worker=4,
                algorithm=AveragingConfig(frequency=1), optimizer=OptimizerConfig(lr=0.05))  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_ingest_jobs_are_described(spark, caltech, tmp_path):
    out = str(tmp_path / "images.parquet")
    with stage_jobs(spark, "ingest") as watch:
        ingest_images(spark, IngestConfig(images_uri=str(caltech["root"]), output_uri=out, max_reject_fraction=0.2))
    assert set(watch.descriptions) == {f"sparkdl ingest: {caltech['root']} -> {out}"}


def test_barrier_training_is_one_described_job_and_evaluate_too(spark, features, tmp_path):
    model = tmp_path / "model"
    with stage_jobs(spark, "train") as watch:
        train_head(spark, features, model, _config())
    fit = [d for d in watch.descriptions if "(barrier)" in d]
    assert fit == ["sparkdl train: averaging, 2 epochs, 2 workers (barrier)"]  # the whole fit: one barrier job
    assert f"sparkdl train: checking {features}" in watch.descriptions
    assert f"sparkdl train: scoring every split of {features}" in watch.descriptions

    with stage_jobs(spark, "evaluate") as watch:
        evaluate_model(spark, model, features, split="test")
    assert set(watch.descriptions) == {f"sparkdl evaluate: {model} on {features} (test)"}


def test_rounds_execution_describes_every_round(spark, features, tmp_path):
    with stage_jobs(spark, "train") as watch:
        train_head(spark, features, tmp_path / "model", _config(execution="rounds"))
    rounds = [d for d in watch.descriptions if ", round " in d]
    # 24 rows, 2 workers, 4 rows per round each: 3 rounds per epoch, one Spark job per round
    assert rounds == [f"sparkdl train: epoch {e}/2, round {r}/3" for e in (1, 2) for r in (1, 2, 3)]
    assert [d for d in watch.descriptions if "scoring valid" in d] == [f"sparkdl train: epoch {e}/2, scoring valid"
                                                                        for e in (1, 2)]  # fmt: skip


def test_a_master_used_alone_describes_its_jobs(spark, features):
    """What the Spark ML estimator calls: the sharing master, without train_head around it."""
    df = spark.read.parquet(features)
    cfg = _config(algorithm=SharingConfig(), epochs=1)
    with stage_jobs(spark, "train") as watch:
        build_master(cfg).fit(df, build_head(cfg.head, 4, 3, seed=0), 3)
    assert "sparkdl train: sharing, 1 epoch, 2 workers (barrier)" in watch.descriptions
    assert "sparkdl train: checking the features, sharding them for 2 workers" in watch.descriptions


def test_evaluate_head_alone_is_described(spark, features):
    """A public helper called with no description on the thread names itself (inside train / evaluate_model it
    keeps theirs: the other tests)."""
    cfg = _config()
    spec = HeadSpec.from_module(cfg.head, 4, 3, build_head(cfg.head, 4, 3, seed=0))
    df = spark.read.parquet(features)  # reading the footers is a job of the test's
    with stage_jobs(spark, "evaluate", outer=(None, None)) as watch:
        evaluate_head(df, spec, 3)
    assert set(watch.descriptions) == {"sparkdl evaluate: a head of 3 classes"}


def test_batch_predict_jobs_are_described(spark, ingested, tmp_path):
    model = make_bundle(tmp_path / "model", "tiny")
    with stage_jobs(spark, "predict") as watch:
        predict_images(spark, PredictConfig(model_uri=str(model), output_uri=str(tmp_path / "p.parquet"),
                                            table_uri=ingested.output_uri))  # fmt: skip
    assert set(watch.descriptions) == {f"sparkdl predict: {model} on {ingested.output_uri}"}
