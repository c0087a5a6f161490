"""Checkpoints: everything a fit needs to continue exactly, one file per checkpoint, on any Hadoop URI.

A checkpoint after epoch ``e`` (``epoch-000e.ckpt`` in the checkpoint directory) is one safetensors file: its
tensors are every array of the state (the exchange's shared state — parameters, optimizer state —, each rank's own
state — sharing: residual —, the best epoch's parameters) and its header metadata is JSON for the rest (the epoch
tracker's history, best score and early-stopping count, thresholds, the config and the shard layout's identity).
Nothing is unpickled on load: a checkpoint directory on a shared file system is read like any untrusted file.

Written complete or not at all (``<name>.partial`` renamed into place); the last ``keep`` are kept. The epoch order
of rows and every torch seed derive from (seed, epoch, step, rank), so the epoch number is all the RNG state there is.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparkdl.errors import ConfigError, DataError

FORMAT = 1
_NAME = re.compile(r"^epoch-(\d{6})\.ckpt$")
# what a resumed fit may change: how it runs, not what it computes (epochs: a finished fit may go on for more)
_FREE = ("epochs", "score_every", "run.transport", "run.checkpoint_dir", "run.checkpoint_every", "run.keep_checkpoints",
         "run.max_attempts", "run.min_workers", "run.resume", "run.slot_wait_s")  # fmt: skip


def _flatten(tree, prefix: str, arrays: dict[str, np.ndarray], seen: dict | None = None):
    """``tree`` with every numpy array replaced by ``{"__array__": key}`` (the array stored under ``key``). An array
    equal to one already stored is stored once (the best epoch's parameters are often the current ones)."""
    seen = {} if seen is None else seen
    if isinstance(tree, (np.ndarray, np.generic)):  # numpy scalars too (a 0-d average is one): dtype kept
        tree = np.asarray(tree)
        same = seen.setdefault((tree.shape, tree.dtype.str), [])
        for key in same:
            if tree.size > 1 and np.array_equal(arrays[key], tree):
                return {"__array__": key}
        arrays[prefix] = tree if tree.flags.c_contiguous else tree.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)
        same.append(prefix)
        return {"__array__": prefix}
    if isinstance(tree, dict):
        return {str(k): _flatten(v, f"{prefix}/{k}", arrays, seen) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays, seen) for i, v in enumerate(tree)]
    return tree


def _unflatten(tree, arrays: dict[str, np.ndarray], source: str):
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            key = tree["__array__"]
            if key not in arrays:
                raise DataError(f"{source}: the checkpoint names a tensor {str(key)[:60]!r} it does not hold: delete it")
            return arrays[key]
        return {k: _unflatten(v, arrays, source) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_unflatten(v, arrays, source) for v in tree]
    return tree


def _fields(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"run": {"workers": 2}}`` -> ``{"run.workers": 2}``."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class Resume:
    """Where a fit continues: after ``epoch`` epochs, from these states (``ranks[r]``: rank r's exchange state;
    None or shorter than the world when ranks are new, e.g. after an elastic re-launch)."""

    epoch: int
    shared: dict
    ranks: list[dict] | None
    tracker: dict


def pack_state(tree) -> bytes:
    """A state (nested dicts / lists of numpy arrays and JSON values) as bytes: what a rank sends rank 0 for a
    checkpoint. Safetensors + JSON, like the checkpoint itself: nothing is unpickled."""
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}
    meta = _flatten(tree, "s", arrays)
    return save(arrays, metadata={"sparkdl": json.dumps(meta)})


def unpack_state(data: bytes, source: str = "a rank's state"):
    arrays, meta = _load(data, source)
    return _unflatten(meta, arrays, source)


def _load(data: bytes, source: str) -> tuple[dict[str, np.ndarray], object]:
    from safetensors import SafetensorError
    from safetensors.numpy import load

    try:
        arrays = load(data)
        header_len = int.from_bytes(data[:8], "little")
        meta = json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["sparkdl"])
    except (SafetensorError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise DataError(f"{source} is not a sparkdl checkpoint ({type(e).__name__}): delete it to start over") from None
    return arrays, meta


def checkpoint_epoch(data: bytes) -> int:
    """The epoch a checkpoint's bytes hold, from its header alone."""
    header_len = int.from_bytes(data[:8], "little")
    return int(json.loads(json.loads(data[8 : 8 + header_len])["__metadata__"]["sparkdl"])["epoch"])


@dataclass(frozen=True)
class Checkpoint:
    epoch: int  # epochs done: the fit continues with this one (0-based)
    config: dict  # TrainConfig.to_json()
    layout: dict  # the shard layout's identity (rows, feature length, classes, workers, per-partition counts)
    shared: dict  # the exchange's shared state (rank 0's)
    ranks: list  # each rank's own exchange state
    tracker: dict  # EpochTracker.state_dict()

    def to_bytes(self) -> bytes:
        return pack_state({"format": FORMAT, "epoch": self.epoch, "config": self.config, "layout": self.layout,
                           "shared": self.shared, "ranks": self.ranks, "tracker": self.tracker})  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "Checkpoint":
        arrays, meta = _load(data, source)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise DataError(f"{source} is a checkpoint of another format ({str(meta.get('format'))[:20] if isinstance(meta, dict) else '?'}"
                            f", this sparkdl reads {FORMAT}): delete it to start over")  # fmt: skip
        try:
            tree = _unflatten(meta, arrays, source)
            return cls(int(tree["epoch"]), dict(tree["config"]), dict(tree["layout"]), dict(tree["shared"]),
                       list(tree["ranks"]), dict(tree["tracker"]))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{source}: the checkpoint's metadata is incomplete ({e}): delete it to start over") from None

    def check_compatible(self, config: dict, layout: dict, elastic: bool, source: str) -> None:
        """``ConfigError`` naming every field that differs between the checkpoint's run and this one, where it
        changes the math (``workers`` too, unless the fit is elastic); the same for the shard layout."""
        free = _FREE + (("run.workers",) if elastic else ())
        mine, theirs = _fields(config), _fields(self.config)
        differ = [f"{k} {theirs.get(k)!r} -> {mine.get(k)!r}" for k in sorted(set(mine) | set(theirs))
                  if not k.startswith(free) and mine.get(k) != theirs.get(k)]  # fmt: skip
        if differ:
            raise ConfigError(f"--resume: {source} was written by a fit with other settings ({'; '.join(differ)}): run "
                              "with the checkpoint's settings, or start over without --resume")  # fmt: skip
        lay = [f"{k} {self.layout.get(k)!r} -> {layout.get(k)!r}" for k in sorted(set(layout) | set(self.layout))
               if layout.get(k) != self.layout.get(k) and not (elastic and k == "workers")]  # fmt: skip
        if lay:
            raise ConfigError(f"--resume: {source} was written for another features table or layout ({'; '.join(lay)}):"
                              " resume on the same table, or start over without --resume")  # fmt: skip

    def resume(self, workers: int) -> Resume:
        """Where the next attempt starts; ranks beyond this checkpoint's (an elastic fit grown, or a new layout)
        start with no state of their own."""
        same = int(self.layout.get("workers", -1)) == workers
        return Resume(self.epoch, self.shared, self.ranks if same else None, self.tracker)


class CheckpointStore:
    """A checkpoint directory: local paths directly, any other Hadoop URI through Spark's Hadoop client."""

    def __init__(self, uri: str, keep: int = 2, spark=None) -> None:
        from sparkdl.data import hadoopfs

        if keep < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1, got {keep}")
        self.spark = spark
        qualified = hadoopfs.qualify(spark, uri) if spark is not None and "://" not in uri and not uri.startswith("file:") else uri
        self.local = hadoopfs.is_local(qualified)
        self.uri = str(hadoopfs.local_path(qualified)) if self.local else qualified.rstrip("/")
        self.keep = keep

    def _join(self, name: str) -> str:
        return os.path.join(self.uri, name) if self.local else f"{self.uri}/{name}"

    def epochs(self) -> list[int]:
        """The complete checkpoints' epochs, ascending."""
        from sparkdl.data import hadoopfs

        if self.local:
            names = os.listdir(self.uri) if os.path.isdir(self.uri) else []
        else:
            names = [n for n, is_dir in hadoopfs.list_dir(self.spark, self.uri) if not is_dir] if hadoopfs.exists(self.spark, self.uri) else []
        return sorted(int(m[1]) for m in map(_NAME.match, names) if m)

    def write(self, checkpoint: Checkpoint) -> tuple[str, int]:
        return self.write_bytes(checkpoint.epoch, checkpoint.to_bytes())

    def write_bytes(self, epoch: int, data: bytes) -> tuple[str, int]:
        """Write a checkpoint's bytes (complete or absent) and keep the last ``keep``; returns (its URI, bytes)."""
        name = f"epoch-{epoch:06d}.ckpt"
        target = self._join(name)
        if self.local:
            os.makedirs(self.uri, exist_ok=True)
            partial = target + ".partial"
            with open(partial, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, target)
        else:
            self._put(data, target)
        for old in self.epochs()[: -self.keep]:
            self._delete(self._join(f"epoch-{old:06d}.ckpt"))
        return target, len(data)

    def _put(self, data: bytes, target: str) -> None:
        from sparkdl.data import hadoopfs

        with tempfile.TemporaryDirectory(prefix="sparkdl-ckpt-") as tmp:
            local = Path(tmp) / "ckpt"
            local.write_bytes(data)
            hadoopfs.put_file(self.spark, local, target + ".partial")
        hadoopfs.delete(self.spark, target)  # the same epoch written again (a re-run attempt): replaced
        hadoopfs.rename(self.spark, target + ".partial", target)

    def _delete(self, target: str) -> None:
        from sparkdl.data import hadoopfs

        if self.local:
            try:
                os.remove(target)
            except FileNotFoundError:
                pass
        else:
            hadoopfs.delete(self.spark, target)

    def clear(self) -> int:
        """Remove every checkpoint (a fit starting over); returns how many there were."""
        epochs = self.epochs()
        for epoch in epochs:
            self._delete(self._join(f"epoch-{epoch:06d}.ckpt"))
        return len(epochs)

    def latest(self) -> tuple[Checkpoint, str] | None:
        """The newest complete checkpoint and its URI, or None."""
        from sparkdl.data import hadoopfs

        epochs = self.epochs()
        if not epochs:
            return None
        target = self._join(f"epoch-{epochs[-1]:06d}.ckpt")
        data = Path(target).read_bytes() if self.local else hadoopfs.read_file(self.spark, target)
        return Checkpoint.from_bytes(data, target), target
