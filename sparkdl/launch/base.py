"""The launcher contract: ``run(fn, data) -> results in rank order``; ``fn(ctx, rows)`` runs once per rank, all at
once, with a started and connected transport in ``ctx``."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Iterator, TypeVar

from sparkdl import errors
from sparkdl.collective.allreduce import Collective
from sparkdl.collective.mailbox import Mailbox
from sparkdl.transport.base import Transport

R = TypeVar("R")


def _no_report(event: dict) -> None:
    return None


def _no_deliver(data: bytes) -> None:
    return None


@dataclass
class WorkerContext:
    rank: int
    world: int
    transport: Transport
    timeout_s: float  # how long to wait for a peer's message before failing
    cpus: int = 1  # cores this worker may use (torch threads)
    report: Callable[[dict], None] = _no_report  # a JSON-able event to the caller's listeners, live
    deliver: Callable[[bytes], None] = _no_deliver  # bytes for the caller (a checkpoint), in order with the events
    comm: Collective = field(init=False)  # this rank's collective operations (allreduce, barrier, gather)

    def __post_init__(self) -> None:
        self.comm = Collective(Mailbox(self.transport, self.timeout_s))

    @property
    def mailbox(self) -> Mailbox:
        return self.comm.mailbox

    def barrier(self) -> None:
        """Every rank waits here until all have arrived (``Collective.barrier``)."""
        self.comm.barrier()


WorkerFn = Callable[[WorkerContext, Iterator], R]


def data_error(name: str, message: str) -> errors.DataError | None:
    """``sparkdl.errors.<name>(message)`` when ``name`` (bare, or qualified by ``sparkdl.errors``) is a ``DataError``
    class, else None. A rank's bad data or diverged fit is the user's to fix whatever the rank, so a launch raises
    it as itself instead of wrapping it in ``WorkerFailedError``."""
    module, _, bare = name.rpartition(".")
    cls = getattr(errors, bare, None) if module in ("", errors.__name__) else None
    if isinstance(cls, type) and issubclass(cls, errors.DataError):
        return cls(message)
    return None


class Launcher(ABC):
    @abstractmethod
    def run(self, fn: WorkerFn, data, on_event: Callable[[dict], None] | None = None,
            on_artifact: Callable[[bytes], None] | None = None) -> list:
        """Run ``fn`` on every rank of ``data`` (one partition / shard per rank); results in rank order.
        Events a worker passes to ``ctx.report`` reach ``on_event`` on the calling side while the launch runs, and
        bytes it passes to ``ctx.deliver`` reach ``on_artifact`` (in the order they were sent, events included).
        A failure on any rank raises ``WorkerFailedError`` naming it; a ``DataError`` (``DivergedError``...) a rank
        raises is raised as itself (``data_error``)."""
