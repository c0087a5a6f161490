"""Model bundle: everything needed to use, evaluate or report on a trained head, in one directory.

    <dir>/config.json      format, backbone spec (from the features table), head spec, labels, training config
    <dir>/head.safetensors the head's weights
    <dir>/metrics.json     train/valid/test metrics, wall seconds, examples/s, bytes moved, phase timings
    <dir>/events.jsonl     one line per round (loss, lr, examples, phase timings) and per epoch

The directory is a local path on the driver.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparkdl.config import HeadConfig
from sparkdl.errors import ConfigError, DataError
from sparkdl.train.head import HeadSpec

BUNDLE_FORMAT = "sparkdl.model/1"


@dataclass
class ModelBundle:
    head: HeadSpec
    labels: list[str]
    backbone: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def config_json(self) -> dict:
        return {
            "format": BUNDLE_FORMAT,
            "backbone": self.backbone,
            "feature_dim": self.head.in_dim,
            "n_classes": self.head.n_classes,
            "labels": self.labels,
            "head": self.head.config.to_json(),
            "training": self.training,
            **self.extra,
        }

    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        from safetensors.numpy import save_file

        out = Path(directory)
        if out.exists():
            if not overwrite:
                raise DataError(f"model directory {out} already exists: pass --overwrite or choose another path")
            shutil.rmtree(out)
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        (tmp / "config.json").write_text(json.dumps(self.config_json(), indent=2) + "\n")
        save_file({k: np.ascontiguousarray(v) for k, v in self.head.params.items()}, str(tmp / "head.safetensors"))
        (tmp / "metrics.json").write_text(json.dumps(self.metrics, indent=2) + "\n")
        with open(tmp / "events.jsonl", "w") as f:
            for event in self.events:
                f.write(json.dumps(event) + "\n")
        tmp.rename(out)  # a bundle is either complete or absent
        return out

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        from safetensors.numpy import load_file

        d = Path(directory)
        config_path = d / "config.json"
        if not config_path.is_file():
            raise DataError(f"{d} is not a sparkdl model bundle (no config.json); train one with `sparkdl train`")
        config = json.loads(config_path.read_text())
        if config.get("format") != BUNDLE_FORMAT:
            raise DataError(f"{config_path}: unknown bundle format {config.get('format')!r} (expected {BUNDLE_FORMAT})")
        head_cfg = config["head"]
        head = HeadSpec(
            HeadConfig(kind=head_cfg["kind"], hidden=tuple(head_cfg["hidden"]), dropout=head_cfg["dropout"]),
            int(config["feature_dim"]),
            int(config["n_classes"]),
            load_file(str(d / "head.safetensors")),
        )
        try:
            head.build()
        except RuntimeError as exc:
            raise ConfigError(f"{d}/head.safetensors does not match config.json's head ({exc})") from None
        metrics = json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else {}
        events = []
        if (d / "events.jsonl").is_file():
            events = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines() if line.strip()]
        known = {"format", "backbone", "feature_dim", "n_classes", "labels", "head", "training"}
        return cls(
            head=head,
            labels=list(config["labels"]),
            backbone=config.get("backbone", {}),
            training=config.get("training", {}),
            metrics=metrics,
            events=events,
            extra={k: v for k, v in config.items() if k not in known},
        )
