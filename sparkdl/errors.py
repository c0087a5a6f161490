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
    """A distributed worker failed; the message names the rank and the cause."""


class DivergedError(DataError):
    """Training produced a NaN/inf loss or parameters; the message names the epoch and round (lower the learning
    rate or scale the features)."""
