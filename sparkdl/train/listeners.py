"""Training listeners: hooks the masters call after every round (iteration of averaging) and every epoch."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable


class TrainingListener:
    def on_round(self, event: dict) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch(self, event: dict) -> None:  # noqa: B027 - optional hook
        pass


class EventLog(TrainingListener):
    """Keeps every event in order (written to the bundle's ``events.jsonl``)."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def on_round(self, event: dict) -> None:
        self.events.append(event)

    def on_epoch(self, event: dict) -> None:
        self.events.append(event)


class ScoreListener(TrainingListener):
    """Reports the loss every ``every`` rounds and a line per epoch through ``say``."""

    def __init__(self, say: Callable[[str], None], every: int = 0) -> None:
        self.say = say
        self.every = every

    def on_round(self, event: dict) -> None:
        if self.every and event["iteration"] % self.every == 0:
            self.say(f"train: iteration {event['iteration']} loss {event['loss']:.4f}")

    def on_epoch(self, event: dict) -> None:
        valid = event.get("valid_accuracy")
        valid_text = f", valid accuracy {valid:.4f}" if valid is not None else ""
        self.say(
            f"train: epoch {event['epoch'] + 1}/{event['epochs']} loss {event['train_loss']:.4f}{valid_text} "
            f"({event['examples_per_second']:.0f} examples/s)"
        )


class StatsCollector(TrainingListener):
    """Sums the per-phase timings the masters report (DL4J-style: broadcast, worker fit, aggregate, driver update)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.rounds = 0

    def on_round(self, event: dict) -> None:
        self.rounds += 1
        for phase, seconds in event.get("phases", {}).items():
            self.totals[phase] += seconds

    def summary(self) -> dict:
        return {"rounds": self.rounds, "phase_seconds": {k: round(v, 4) for k, v in sorted(self.totals.items())}}
