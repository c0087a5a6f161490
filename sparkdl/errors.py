"""Exception hierarchy. Every message says what to fix."""
from __future__ import annotations


class SparkDLError(Exception):
    """Base class of every error sparkdl raises on purpose."""


class ConfigError(SparkDLError):
    """A setting, argument or environment prerequisite is wrong (fix the call or the machine)."""


class DataError(SparkDLError):
    """Input data is missing, malformed or has too many bad rows (fix the data or the threshold)."""


class TransportError(SparkDLError):
    """A message between workers was lost, malformed or unauthenticated."""


class WorkerFailedError(SparkDLError):
    """A distributed worker failed; the message names the rank, where it was (epoch, step) and the cause when known.
    ``rank``, ``epoch``, ``step`` (0-based) and ``cause`` are also attributes (None when unknown)."""

    def __init__(self, message: str, rank: int | None = None, epoch: int | None = None, step: int | None = None,
                 cause: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.rank, self.epoch, self.step, self.cause = rank, epoch, step, cause if cause is not None else message

    def __reduce__(self):  # keeps the attributes through pickling (process launchers)
        return (type(self), (str(self), self.rank, self.epoch, self.step, self.cause))


class DivergedError(DataError):
    """Training produced a NaN/inf loss or parameters; the message names the epoch and round (lower the learning
    rate or scale the features)."""
