"""SharedGradientTrainingMaster: Strom (2015) threshold-quantized gradient sharing over a tree of workers.

All workers run at once in one barrier stage (``SparkBarrierLauncher``; ``LocalLauncher`` on one machine), each on
its shard (the same layout as the averaging master). Per step, on every worker:

1. gradient ``g`` of one minibatch (``batch_size_per_worker`` rows of its shard, a seeded order per epoch);
2. ``r += g``; entries with ``|r| >= tau`` leave as exactly ``+-tau`` (``codec``), ``r -= sent``; the residual is
   clipped to ``+-k tau`` every n steps (``residual``); tau comes from the worker's ``ThresholdAlgorithm``;
3. the encoded update goes to the worker's tree neighbours; every worker relays what it receives to its other
   neighbours (``tree.forward_to``) and drops duplicates by message id, so every update reaches every worker once;
4. every worker applies every update, its own and all received, exactly once, through the optimizer: the sum of the
   decoded updates over the workers, divided by their number, is the gradient of one optimizer step.

Consistency: ``staleness = 0`` applies step s only with all W updates of step s, summed in origin order, so every
worker holds bit-identical parameters (checked at the end). ``staleness = k > 0`` lets a worker run up to k steps
ahead of the oldest update it is missing, applying updates as they arrive in (step, origin) order; every update is
still applied exactly once, and each epoch ends with all of them applied. Nothing but encoded updates (and, at epoch
end, the validation counts and the thresholds, averaged) travels between workers.
"""
from __future__ import annotations

import functools
import time
from typing import Sequence

import numpy as np
from torch import nn

from sparkdl.session import job_description
from sparkdl.train.barrier import (
    launch_description, lay_out, params_digest, run_launch, score_valid_shard, steps_per_epoch,
)  # fmt: skip
from sparkdl.train.collective import tree_allreduce
from sparkdl.train.head import HeadSpec
from sparkdl.train.layout import epoch_order, load_shard, round_rows, round_seed
from sparkdl.train.listeners import TrainingListener
from sparkdl.train.local import build_optimizer, get_params, set_params
from sparkdl.train.master import EpochTracker, TrainingMaster, TrainResult, head_classes
from sparkdl.train.sharing import codec, tree
from sparkdl.train.sharing.residual import ResidualAccumulator
from sparkdl.train.sharing.threshold import parse_threshold
from sparkdl.transport.base import Kind, UpdateMessage


class _Exchange:
    """One worker's side of the update protocol: send own, relay others', collect, apply in order."""

    def __init__(self, ctx, fanout: int, staleness: int) -> None:
        self.ctx = ctx
        self.rank, self.world = ctx.rank, ctx.world
        self.fanout = fanout
        self.staleness = staleness
        self.pending: dict[int, dict[int, bytes]] = {}  # step -> origin -> message
        self.applied_upto = 0  # every step below this is fully applied
        self.applied: set[tuple[int, int]] = set()  # (step, origin) applied out of order (staleness > 0)
        self.decode_seconds = 0.0
        ctx.mailbox.on_arrival = self._relay

    def _relay(self, msg: UpdateMessage) -> None:
        if msg.kind == Kind.UPDATE:
            for n in tree.forward_to(self.rank, self.world, self.fanout, msg.sender):
                self.ctx.transport.send(n, msg)

    def publish(self, step: int, message: bytes) -> None:
        msg = UpdateMessage(Kind.UPDATE, step, self.rank, self.ctx.mailbox.next_id(), message)
        for n in tree.forward_to(self.rank, self.world, self.fanout, None):
            self.ctx.transport.send(n, msg)
        self.pending.setdefault(step, {})[self.rank] = message

    def _collect(self) -> None:
        for msg in self.ctx.mailbox.drain(Kind.UPDATE):
            self.pending.setdefault(msg.step, {})[msg.origin] = msg.payload

    def wait_complete(self, upto: int) -> None:
        """Block until every worker's update of every step <= ``upto`` is here."""
        deadline = time.monotonic() + self.ctx.timeout_s
        while True:
            self._collect()
            missing = [t for t in range(self.applied_upto, upto + 1)
                       if len(self.pending.get(t, {})) + sum((t, o) in self.applied for o in range(self.world)) < self.world]  # fmt: skip
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {self.rank} has waited {self.ctx.timeout_s:g} s for the updates of step {missing[0]}")
            self.ctx.mailbox.pull(0.5)

    def take_update(self, step: int, length: int) -> tuple[np.ndarray, int]:
        """The summed update to apply now: step ``step`` alone when synchronous; every update that has arrived and
        was not applied yet, in (step, origin) order, otherwise. Returns (sum, number of messages)."""
        total = np.zeros(length, dtype=np.float32)
        used = 0
        t0 = time.perf_counter()
        if self.staleness == 0:
            for origin in range(self.world):
                codec.decode(self.pending[step][origin]).add_into(total)
            used = self.world
            del self.pending[step]
            self.applied_upto = step + 1
        else:
            self._collect()
            for t in sorted(self.pending):
                for origin in sorted(self.pending[t]):
                    codec.decode(self.pending[t][origin]).add_into(total)
                    self.applied.add((t, origin))
                    used += 1
                del self.pending[t]
            while all((self.applied_upto, o) in self.applied for o in range(self.world)):
                for o in range(self.world):
                    self.applied.discard((self.applied_upto, o))
                self.applied_upto += 1
        self.decode_seconds += time.perf_counter() - t0
        return total, used


def _flat_grad(params) -> np.ndarray:
    import torch

    return torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in params]).numpy()


def _set_grad(params, flat: np.ndarray) -> None:
    import torch

    offset = 0
    for p in params:
        n = p.numel()
        p.grad = torch.from_numpy(flat[offset : offset + n].copy()).view_as(p)
        offset += n


def _sharing_fit(ctx, elements, state: dict) -> dict:
    import torch

    cfg = state["config"]
    sh = cfg.sharing
    rank, world = ctx.rank, ctx.world
    torch.set_num_threads(max(1, ctx.cpus))
    shard = load_shard(elements, state["dim"], ("train", "valid"))
    (x, y), (xv, yv) = shard["train"], shard["valid"]
    spec = state["spec"]
    model = spec.build()
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    params = list(model.parameters())
    length = sum(p.numel() for p in params)
    residual = ResidualAccumulator(length, sh.residual_clip_k, sh.residual_clip_every)
    threshold = parse_threshold(sh.threshold)
    exchange = _Exchange(ctx, cfg.tree_fanout, sh.staleness)
    loss_fn = nn.CrossEntropyLoss()
    b = cfg.batch_size_per_worker
    tracker = EpochTracker(cfg)
    stats = {"encode_seconds": 0.0, "messages": 0, "entries_sent": 0, "message_bytes": 0, "dense_bytes": 0,
             "taus": [], "residual_norms": []}  # fmt: skip
    step = 0
    for epoch in range(cfg.epochs):
        epoch_start = time.perf_counter()
        model.train()
        order = epoch_order(cfg.seed, epoch, rank, len(y))
        loss_sum, examples = 0.0, 0
        for s in range(state["steps_per_epoch"]):
            t0 = time.perf_counter()
            idx = round_rows(order, s, b)
            optimizer.zero_grad(set_to_none=True)
            loss_value = 0.0
            if len(idx):
                torch.manual_seed(round_seed(cfg.seed, epoch, s, rank))
                xb = torch.from_numpy(np.ascontiguousarray(x[idx]))
                yb = torch.from_numpy(y[idx].astype(np.int64))
                loss = loss_fn(model(xb), yb)
                loss.backward()
                loss_value = float(loss.detach())
                tracker.check_loss(loss_value, epoch, s)
                loss_sum += loss_value * len(idx)
                examples += len(idx)
            grad = _flat_grad(params) if len(idx) else np.zeros(length, np.float32)
            t1 = time.perf_counter()
            residual.add(grad)
            tracker.check_finite([residual.residual], epoch, s, "the gradients (the residual)")
            threshold.calibrate(residual.residual)
            tau = threshold.threshold()
            message, sent = residual.encode(tau, step, rank)
            threshold.observe(sent, length)
            t2 = time.perf_counter()
            exchange.publish(step, message)
            exchange.wait_complete(step - sh.staleness)
            t3 = time.perf_counter()
            update, used = exchange.take_update(step, length)
            if used:
                _set_grad(params, update / np.float32(world))
                optimizer.step()
            t4 = time.perf_counter()
            stats["encode_seconds"] += t2 - t1
            stats["messages"] += 1
            stats["entries_sent"] += sent
            stats["message_bytes"] += len(message)
            stats["dense_bytes"] += 4 * length
            step += 1
            if rank == 0:
                ctx.report({
                    "type": "round", "epoch": epoch, "round": s, "iteration": step, "loss": loss_value,
                    "lr": cfg.optimizer.lr, "examples": int(len(idx)), "workers": world, "tau": tau,
                    "sent_fraction": sent / length, "message_bytes": len(message),
                    "residual_norm": residual.norm(), "updates_applied": used,
                    "phases": {"gradient": t1 - t0, "encode": t2 - t1, "exchange": t3 - t2, "apply": t4 - t3},
                })  # fmt: skip
        if sh.staleness:  # every update of the epoch applied before it is scored
            exchange.wait_complete(step - 1)
            update, used = exchange.take_update(step - 1, length)
            if used:
                optimizer.zero_grad(set_to_none=True)
                _set_grad(params, update / np.float32(world))
                optimizer.step()
        # a finite residual (checked every step) gives a finite tau and update: the parameters, once per epoch
        tracker.check_finite((p.detach().numpy() for p in params), epoch, state["steps_per_epoch"] - 1)
        stats["taus"].append(threshold.threshold())
        stats["residual_norms"].append(residual.norm())
        # thresholds averaged across workers at epoch end (DL4J), carried over
        tau_sum = tree_allreduce(ctx.mailbox, 2 * epoch + 1, [np.array([threshold.threshold()])], cfg.tree_fanout)
        threshold.set_threshold(float(tau_sum[0][0]) / world)
        valid, sums = score_valid_shard(ctx.mailbox, 2 * epoch, model, xv, yv, spec.n_classes, cfg.tree_fanout,
                                        extra=np.array([loss_sum, examples], dtype=np.float64))  # fmt: skip
        record = tracker.end_epoch(epoch, float(sums[0]), float(sums[1]), time.perf_counter() - epoch_start, valid,
                                   lambda: get_params(model), tau=threshold.threshold())  # fmt: skip
        if rank == 0:
            ctx.report(record)
        if tracker.should_stop:
            break
    final = get_params(model)
    out = {"rank": rank, "digest": params_digest(final), "transport": ctx.transport.stats.to_json(),
           "decode_seconds": exchange.decode_seconds, "duplicates": ctx.mailbox.duplicates, "length": length,
           **stats}  # fmt: skip
    if rank == 0:
        out.update(final_params=final, best_params=tracker.best_params, best_epoch=tracker.best_epoch,
                   history=tracker.history)  # fmt: skip
    return out


class SharedGradientTrainingMaster(TrainingMaster):
    """``launcher``: a ``SparkBarrierLauncher`` over the config's transport unless given (a ``LocalLauncher``
    collects the packed shards to the driver and runs the ranks on this machine)."""

    def __init__(self, config, launcher=None) -> None:
        super().__init__(config)
        self.launcher = launcher

    def fit(self, features, head: nn.Module, n_classes: int | None = None,
            listeners: Sequence[TrainingListener] = ()) -> TrainResult:  # fmt: skip
        from sparkdl.launch.spark import SparkBarrierLauncher

        cfg = self.config
        n_classes = head_classes(head, n_classes)
        start = time.perf_counter()
        launcher = self.launcher or SparkBarrierLauncher(cfg.transport)  # refuses an unusable transport before any work
        info, shards = lay_out(features, cfg.workers, n_classes, with_valid=True)
        dim = info["feature_dim"]
        steps = steps_per_epoch(info["train"], cfg.workers, cfg.batch_size_per_worker)
        prepare_seconds = time.perf_counter() - start
        state = {"config": cfg, "spec": HeadSpec(cfg.head, dim, n_classes, get_params(head)), "dim": dim,
                 "steps_per_epoch": steps}  # fmt: skip
        try:
            with job_description(features.sparkSession, "train", launch_description("sharing", cfg.epochs, cfg.workers, launcher)):
                outs = run_launch(launcher, functools.partial(_sharing_fit, state=state), shards, listeners)
        finally:
            shards.unpersist()
        lead = outs[0]
        identical = len({o["digest"] for o in outs}) == 1
        if cfg.sharing.staleness == 0 and not identical:
            raise RuntimeError("synchronous sharing ended with different parameters on different workers (a bug)")
        set_params(head, lead["best_params"])
        seconds = time.perf_counter() - start
        history = lead["history"]
        examples = sum(h["examples"] for h in history)
        message_bytes = sum(o["message_bytes"] for o in outs)
        dense_bytes = sum(o["dense_bytes"] for o in outs)
        per_worker = [{"rank": o["rank"], "bytes_sent": o["transport"]["bytes_sent"],
                       "bytes_received": o["transport"]["bytes_received"], "rejected": o["transport"]["rejected"],
                       "update_bytes": o["message_bytes"],
                       "dense_equivalent_bytes": o["dense_bytes"],
                       "compression_ratio": o["dense_bytes"] / max(1, o["message_bytes"]), "encode_seconds": round(o["encode_seconds"], 4),
                       "decode_seconds": round(o["decode_seconds"], 4),
                       "sent_fraction": o["entries_sent"] / max(1, o["messages"] * o["length"]),
                       "tau_per_epoch": o["taus"], "residual_norm_per_epoch": o["residual_norms"]}
                      for o in outs]  # fmt: skip
        stats = {
            "examples": examples,
            "examples_per_second": examples / seconds if seconds > 0 else 0.0,
            "iterations": len(history) * steps,
            "steps_per_epoch": steps,
            "prepare_seconds": prepare_seconds,
            "bytes_between_workers": sum(o["transport"]["bytes_sent"] for o in outs),
            "transport_rejected": sum(o["transport"]["rejected"] for o in outs),  # refused calls: wrong secret, probes
            "update_bytes": message_bytes,
            "dense_equivalent_bytes": dense_bytes,
            "compression_ratio": dense_bytes / max(1, message_bytes),
            "sent_fraction": sum(o["entries_sent"] for o in outs) / max(1, sum(o["messages"] * o["length"] for o in outs)),
            "bytes_driver_to_workers": sum(v.nbytes for v in lead["final_params"].values()) * cfg.workers,
            "bytes_workers_to_driver": 2 * sum(v.nbytes for v in lead["final_params"].values()),
            "ranks_identical": identical,
            "workers": per_worker,
        }
        return TrainResult(head=head, best_epoch=lead["best_epoch"], history=history, stats=stats, seconds=seconds,
                           final_params=lead["final_params"])  # fmt: skip
