"""Typed training events: what the loop reports per round (step) and per epoch, what the driver records about
failed attempts and checkpoints. Listeners and the report read attributes; ``to_json`` / ``from_json`` are the wire
and ``events.jsonl`` form (``{"type": "round", ...}``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Iterable, Sequence, Union


@dataclass(frozen=True)
class RoundEvent:
    """One averaging round or sharing step, as rank 0 saw it (losses and examples summed over the workers for
    averaging; rank 0's own for sharing)."""

    type: ClassVar[str] = "round"
    optional: ClassVar[tuple[str, ...]] = ("minibatches", "tau", "sent_fraction", "message_bytes", "residual_norm",
                                           "updates_applied")  # fmt: skip
    epoch: int
    round: int
    iteration: int
    loss: float
    lr: float
    examples: int
    workers: int
    phases: dict[str, float] = field(default_factory=dict)
    minibatches: int | None = None  # averaging: minibatches fitted by all workers
    tau: float | None = None  # sharing: the threshold of this step
    sent_fraction: float | None = None
    # bytes rank 0 sent: its sharing message; averaging: its allreduce payload (rounds: the parameters, each way)
    message_bytes: int | None = None
    residual_norm: float | None = None
    updates_applied: int | None = None


@dataclass(frozen=True)
class EpochEvent:
    """One epoch over all workers: the training loss, ``valid`` metrics (None without valid rows)."""

    type: ClassVar[str] = "epoch"
    optional: ClassVar[tuple[str, ...]] = ("tau",)
    epoch: int
    epochs: int
    train_loss: float
    examples: int
    seconds: float
    examples_per_second: float
    valid_accuracy: float | None = None
    valid_loss: float | None = None
    valid_macro_f1: float | None = None
    prepare_seconds: float = 0.0
    tau: float | None = None  # sharing: the workers' averaged threshold, carried into the next epoch


@dataclass(frozen=True)
class FailureEvent:
    """An attempt of the fit failed (a task killed, an executor lost, a peer unreachable)."""

    type: ClassVar[str] = "failure"
    optional: ClassVar[tuple[str, ...]] = ()
    attempt: int  # 1-based
    cause: str
    rank: int | None = None  # the failed worker, when known
    epoch: int | None = None  # the epoch it failed in, when known (0-based)
    resume_epoch: int | None = None  # where the next attempt starts (0-based); None: no next attempt


@dataclass(frozen=True)
class CheckpointEvent:
    """A checkpoint was written: the fit can continue from ``epoch`` (the number of epochs done)."""

    type: ClassVar[str] = "checkpoint"
    optional: ClassVar[tuple[str, ...]] = ()
    epoch: int
    uri: str
    bytes: int
    seconds: float


@dataclass(frozen=True)
class PlacementEvent:
    """Where an attempt's barrier workers run: each rank's transport address (``host:port``, rank order), as rank 0
    learned them when the workers linked up."""

    type: ClassVar[str] = "placement"
    optional: ClassVar[tuple[str, ...]] = ()
    addresses: list[str]


Event = Union[RoundEvent, EpochEvent, FailureEvent, CheckpointEvent, PlacementEvent]
TYPES: dict[str, type] = {cls.type: cls for cls in (RoundEvent, EpochEvent, FailureEvent, CheckpointEvent, PlacementEvent)}


def to_json(event: Event) -> dict:
    """``{"type": ..., field: value}``; optional fields left out when None."""
    out: dict = {"type": event.type}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if value is None and f.name in event.optional:
            continue
        out[f.name] = dict(value) if isinstance(value, dict) else value
    return out


def from_json(data: dict) -> Event | None:
    """The event a ``to_json`` dict describes; None for a type this version does not know (newer files) or a record
    missing a field."""
    cls = TYPES.get(data.get("type"))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError:  # a required field missing (a hand-edited or truncated events.jsonl)
        return None


def events_from_json(items: Iterable[dict]) -> list[Event]:
    return [e for e in (from_json(d) for d in items if isinstance(d, dict)) if e is not None]


class TrainingListener:
    """Hooks the driver calls as events arrive (live, from rank 0 of a barrier launch)."""

    def on_round(self, event: RoundEvent) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch(self, event: EpochEvent) -> None:  # noqa: B027 - optional hook
        pass

    def on_failure(self, event: FailureEvent) -> None:  # noqa: B027 - optional hook
        pass

    def on_checkpoint(self, event: CheckpointEvent) -> None:  # noqa: B027 - optional hook
        pass

    def on_placement(self, event: PlacementEvent) -> None:  # noqa: B027 - optional hook
        pass


_HOOKS: dict[type, str] = {RoundEvent: "on_round", EpochEvent: "on_epoch", FailureEvent: "on_failure",
                           CheckpointEvent: "on_checkpoint", PlacementEvent: "on_placement"}  # fmt: skip


def notify(listeners: Sequence[TrainingListener], event: Event) -> None:
    """Hand ``event`` to every listener's hook for its type (a listener without the hook is skipped)."""
    hook = _HOOKS[type(event)]
    for listener in listeners:
        method: Callable | None = getattr(listener, hook, None)
        if method is not None:
            method(event)
