"""Training listeners the train stage uses: the event log (the bundle's ``events.jsonl``), progress lines, phase
timings. Each reads the typed events of ``train.events``."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

from sparkdl.train.events import CheckpointEvent, EpochEvent, Event, FailureEvent, RoundEvent, TrainingListener, to_json


class EventLog(TrainingListener):
    """Keeps every event in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def on_round(self, event: RoundEvent) -> None:
        self.events.append(event)

    def on_epoch(self, event: EpochEvent) -> None:
        self.events.append(event)

    def on_failure(self, event: FailureEvent) -> None:
        self.events.append(event)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.events.append(event)

    def to_json(self) -> list[dict]:
        return [to_json(e) for e in self.events]


class ScoreListener(TrainingListener):
    """Reports the loss every ``every`` rounds, a line per epoch, failed attempts and checkpoints through ``say``."""

    def __init__(self, say: Callable[[str], None], every: int = 0) -> None:
        self.say = say
        self.every = every

    def on_round(self, event: RoundEvent) -> None:
        if self.every and event.iteration % self.every == 0:
            self.say(f"train: iteration {event.iteration} loss {event.loss:.4f}")

    def on_epoch(self, event: EpochEvent) -> None:
        valid = f", valid accuracy {event.valid_accuracy:.4f}" if event.valid_accuracy is not None else ""
        self.say(f"train: epoch {event.epoch + 1}/{event.epochs} loss {event.train_loss:.4f}{valid} "
                 f"({event.examples_per_second:.0f} examples/s)")  # fmt: skip

    def on_failure(self, event: FailureEvent) -> None:
        where = f" in epoch {event.epoch + 1}" if event.epoch is not None else ""
        then = (f"; attempt {event.attempt + 1} resumes at epoch {event.resume_epoch + 1}"
                if event.resume_epoch is not None else "")  # fmt: skip
        self.say(f"train: attempt {event.attempt} failed{where}: {event.cause}{then}")

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.say(f"train: checkpoint after epoch {event.epoch} -> {event.uri} ({event.bytes / 1e6:.1f} MB, "
                 f"{event.seconds:.2f} s)")  # fmt: skip


class StatsCollector(TrainingListener):
    """Sums the per-phase timings of the rounds (DL4J-style: broadcast, worker fit, aggregate, driver update)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.rounds = 0

    def on_round(self, event: RoundEvent) -> None:
        self.rounds += 1
        for phase, seconds in event.phases.items():
            self.totals[phase] += seconds

    def summary(self) -> dict:
        return {"rounds": self.rounds, "phase_seconds": {k: round(v, 4) for k, v in sorted(self.totals.items())}}
