"""Shared gradients (Strom 2015; DL4J SharedTrainingMaster), one rank's side.

Per step, on every worker:

1. gradient ``g`` of one minibatch (``batch_size_per_worker`` rows of its shard, a seeded order per epoch);
2. ``r += g``; entries with ``|r| >= tau`` leave as exactly ``+-tau`` (``codec``), ``r -= sent``; the residual is
   clipped to ``+-k tau`` every n steps (``residual``); tau comes from the worker's ``ThresholdAlgorithm``;
3. the encoded update goes to the worker's tree neighbours; every worker relays what it receives to its other
   neighbours (``collective.tree.forward_to``) and drops duplicates by message id, so every update reaches every
   worker once;
4. every worker applies every update, its own and all received, exactly once, through the optimizer: the sum of the
   decoded updates over the workers, divided by their number, is the gradient of one optimizer step.

Consistency: ``staleness = 0`` applies step s only with all W updates of step s, summed in origin order, so every
worker holds bit-identical parameters (checked at the end). ``staleness = k > 0`` lets a worker run up to k steps
ahead of the oldest update it is missing, applying updates as they arrive in (step, origin) order; every update is
still applied exactly once, and each epoch ends with all of them applied. Nothing but encoded updates (and, at epoch
end, the validation counts and the thresholds, averaged) travels between workers.
"""
from __future__ import annotations

import time

import numpy as np

from sparkdl.collective import tree
from sparkdl.errors import TransportError
from sparkdl.train.exchange import Exchange, StepResult
from sparkdl.train.exchange.sharing import codec
from sparkdl.train.exchange.sharing.residual import ResidualAccumulator
from sparkdl.train.exchange.sharing.threshold import build_threshold
from sparkdl.train.local import build_optimizer, get_optimizer_state, get_params, set_optimizer_state, set_params
from sparkdl.transport.base import Kind, UpdateMessage


class UpdateRelay:
    """One worker's side of the update protocol: send own, relay others', collect, apply in order."""

    def __init__(self, comm, staleness: int) -> None:
        self.comm = comm
        self.mailbox = comm.mailbox
        self.transport = comm.mailbox.transport
        self.rank, self.world, self.fanout = comm.rank, comm.world, comm.fanout
        self.staleness = staleness
        self.pending: dict[int, dict[int, bytes]] = {}  # step -> origin -> message
        self.applied_upto = 0  # every step below this is fully applied
        self.applied: set[tuple[int, int]] = set()  # (step, origin) applied out of order (staleness > 0)
        self.applied_per_origin = [0] * self.world  # updates applied, by the rank that sent them
        self.first_step = 0  # the first step of this attempt (a resumed fit starts later)
        self.max_lag = 0  # the most steps an applied update was behind the step applying it
        self.decode_seconds = 0.0
        self._total: np.ndarray | None = None
        self.mailbox.on_arrival = self._relay

    def _relay(self, msg: UpdateMessage) -> None:
        if msg.kind == Kind.UPDATE:
            for n in tree.forward_to(self.rank, self.world, self.fanout, msg.sender):
                self.transport.send(n, msg)

    def publish(self, step: int, message: bytes) -> None:
        msg = UpdateMessage(Kind.UPDATE, step, self.rank, self.mailbox.next_id(), message)
        for n in tree.forward_to(self.rank, self.world, self.fanout, None):
            self.transport.send(n, msg)
        self.pending.setdefault(step, {})[self.rank] = message

    def _collect(self) -> None:
        for msg in self.mailbox.drain(Kind.UPDATE):
            self.pending.setdefault(msg.step, {})[msg.origin] = msg.payload

    def wait_complete(self, upto: int) -> None:
        """Block until every worker's update of every step <= ``upto`` is here."""
        deadline = time.monotonic() + self.mailbox.timeout_s
        while True:
            self._collect()
            missing = [t for t in range(self.applied_upto, upto + 1)
                       if len(self.pending.get(t, {})) + sum((t, o) in self.applied for o in range(self.world)) < self.world]  # fmt: skip
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TransportError(f"rank {self.rank} waited {self.mailbox.timeout_s:g} s for the updates of step "
                                     f"{missing[0]}: a worker is stuck or gone")  # fmt: skip
            self.mailbox.pull(0.5)

    def take_update(self, step: int, length: int) -> tuple[np.ndarray, int]:
        """The summed update to apply now: step ``step`` alone when synchronous; every update that has arrived and
        was not applied yet, in (step, origin) order, otherwise. Returns (sum, number of messages)."""
        if self._total is None or len(self._total) != length:
            self._total = np.zeros(length, dtype=np.float32)
        total = self._total
        total.fill(0)
        used = 0
        t0 = time.perf_counter()
        if self.staleness == 0:
            for origin in range(self.world):
                codec.decode(self.pending[step][origin]).add_into(total)
                self.applied_per_origin[origin] += 1
            used = self.world
            del self.pending[step]
            self.applied_upto = step + 1
        else:
            self._collect()
            for t in sorted(self.pending):
                for origin in sorted(self.pending[t]):
                    if (t, origin) in self.applied or t < self.applied_upto:
                        raise TransportError(f"rank {self.rank} got the update of rank {origin} for step {t} twice")
                    codec.decode(self.pending[t][origin]).add_into(total)
                    self.applied.add((t, origin))
                    self.applied_per_origin[origin] += 1
                    self.max_lag = max(self.max_lag, step - t)
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


class SharingExchange(Exchange):
    counts_are_global = False  # each rank's own loss; summed with the valid counts at epoch end
    has_rank_state = True  # residual, threshold
    diverges_together = False  # a rank's own loss or residual: that rank fails, the launch stops the others

    def __init__(self, config, comm, model, checks) -> None:
        super().__init__(config, comm, model, checks)
        sh = config.algorithm
        self.optimizer = build_optimizer(config.optimizer, model.parameters())
        self.tensors = list(model.parameters())
        self.length = sum(p.numel() for p in self.tensors)
        self.residual = ResidualAccumulator(self.length, sh.residual_clip_k, sh.residual_clip_every)
        self.threshold = build_threshold(sh.threshold)
        self.relay = UpdateRelay(comm, sh.staleness)
        self.last_step = -1
        self.stats = {"encode_seconds": 0.0, "messages": 0, "entries_sent": 0, "message_bytes": 0, "dense_bytes": 0,
                      "taus": [], "residual_norms": []}  # fmt: skip

    def begin_epoch(self, epoch: int) -> None:
        self.model.train()

    def step(self, epoch, index, global_step, x, y, seed) -> StepResult:
        import torch
        from torch import nn

        sh, world = self.config.algorithm, self.comm.world
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        if len(y):
            torch.manual_seed(seed)
            xb = torch.from_numpy(np.ascontiguousarray(x))
            yb = torch.from_numpy(y.astype(np.int64))
            loss = nn.functional.cross_entropy(self.model(xb), yb)
            loss.backward()
            loss_value = float(loss.detach())
            self.checks.check_loss(loss_value, epoch, index)
        grad = _flat_grad(self.tensors) if len(y) else np.zeros(self.length, np.float32)
        t1 = time.perf_counter()
        self.residual.add(grad)
        self.checks.check_finite([self.residual.residual], epoch, index, "the gradients (the residual)")
        self.threshold.calibrate(self.residual.residual)
        tau = self.threshold.threshold()
        message, sent = self.residual.encode(tau, global_step, self.comm.rank, self.threshold.limit(self.length))
        self.threshold.observe(sent, self.length)
        t2 = time.perf_counter()
        self.relay.publish(global_step, message)
        self.relay.wait_complete(global_step - sh.staleness)
        t3 = time.perf_counter()
        update, used = self.relay.take_update(global_step, self.length)
        if used:
            _set_grad(self.tensors, update / np.float32(world))
            self.optimizer.step()
        t4 = time.perf_counter()
        self.last_step = global_step
        st = self.stats
        st["encode_seconds"] += t2 - t1
        st["messages"] += 1
        st["entries_sent"] += sent
        st["message_bytes"] += len(message)
        st["dense_bytes"] += 4 * self.length
        event = {"loss": loss_value, "examples": int(len(y)), "workers": world, "tau": tau,
                 "sent_fraction": sent / self.length, "message_bytes": len(message),
                 "residual_norm": self.residual.norm(), "updates_applied": used,
                 "phases": {"gradient": t1 - t0, "encode": t2 - t1, "exchange": t3 - t2, "apply": t4 - t3}}  # fmt: skip
        return StepResult(loss_value * len(y), int(len(y)), event)

    def end_epoch(self, epoch: int, steps: int) -> dict:
        if self.config.algorithm.staleness:  # every update of the epoch applied before it is scored
            self.relay.wait_complete(self.last_step)
            update, used = self.relay.take_update(self.last_step, self.length)
            if used:
                self.optimizer.zero_grad(set_to_none=True)
                _set_grad(self.tensors, update / np.float32(self.comm.world))
                self.optimizer.step()
        # a finite residual (checked every step) gives a finite tau and update: the parameters, once per epoch
        self.checks.check_finite((p.detach().numpy() for p in self.tensors), epoch, steps - 1)
        self.stats["taus"].append(self.threshold.threshold())
        self.stats["residual_norms"].append(self.residual.norm())
        # thresholds averaged across workers at epoch end (DL4J), carried over
        tau_sum = self.comm.allreduce([np.array([self.threshold.threshold()])])
        self.threshold.set_threshold(float(tau_sum[0][0]) / self.comm.world)
        return {"tau": self.threshold.threshold()}

    def params(self) -> dict[str, np.ndarray]:
        return get_params(self.model)

    def shared_state(self) -> dict:
        return {"params": get_params(self.model), "optimizer": get_optimizer_state(self.optimizer)}

    def rank_state(self) -> dict:
        return {"residual": self.residual.state_dict(), "threshold": self.threshold.state_dict()}

    def load_state(self, shared: dict, rank: dict | None, global_step: int) -> None:
        set_params(self.model, shared["params"])
        self.optimizer.state.clear()
        set_optimizer_state(self.optimizer, shared["optimizer"])
        if rank is not None:  # a rank new to the fit (elastic) starts with an empty residual and a fresh threshold
            self.residual.load_state_dict(rank["residual"])
            self.threshold.load_state_dict(rank["threshold"])
        self.relay.applied_upto = self.relay.first_step = global_step
        self.last_step = global_step - 1

    def result(self) -> dict:
        relay = self.relay
        expected = self.last_step + 1 - relay.first_step  # one update per rank per step of this attempt
        wrong = {o: n for o, n in enumerate(relay.applied_per_origin) if n != expected}
        if wrong:
            raise TransportError(f"rank {self.comm.rank} applied {wrong} updates from rank(s) {sorted(wrong)}, "
                                 f"expected {expected} from each: an update was lost or applied twice")  # fmt: skip
        return {**self.stats, "decode_seconds": relay.decode_seconds, "duplicates": self.comm.mailbox.duplicates,
                "length": self.length, "updates_applied": list(relay.applied_per_origin), "updates_expected": expected,
                "max_update_lag": relay.max_lag}  # fmt: skip
