"""Threshold encoding of a residual (Strom 2015): entries with |r| >= tau leave as exactly +-tau, the rest stay.

Two wire formats, the smaller one per message (the switch is Deeplearning4j's: bitmap above length/16 entries):

- **sparse**: one int32 per sent entry, the 1-based index carrying the sign (``+(i+1)`` for +tau, ``-(i+1)``);
- **bitmap**: 2 bits per parameter, as two bit planes of ``ceil(length / 8)`` bytes each (little bit order): the
  first marks +tau, the second -tau; a parameter marked in both is malformed.

Header (``HEADER``, 48 bytes, little-endian): magic ``STQ1``, format, tau (float32), length (parameters), count
(entries sent), step, origin rank, message id, CRC-32 of the body. ``decode`` checks all of it and raises
``TransportError`` for anything malformed (truncated, wrong checksum, wrong length, unknown format, an index out of
range, a bitmap marking both signs or bits past ``length``), so a bad message is never partly applied.
Everything is vectorized numpy: no Python loop over entries.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sparkdl.errors import ConfigError, TransportError

MAGIC = b"STQ1"
HEADER = struct.Struct("<4sBxxxfQQqiQI")
SPARSE, BITMAP = 1, 2
FORMATS = {SPARSE: "sparse", BITMAP: "bitmap"}
MAX_LENGTH = 2**31 - 2  # 1-based signed int32 indices


@dataclass(frozen=True)
class Decoded:
    fmt: int
    tau: float
    length: int
    count: int
    step: int
    origin: int
    msg_id: int
    positive: np.ndarray | None = None  # sparse: 0-based indices sent as +tau
    negative: np.ndarray | None = None  # sparse: 0-based indices sent as -tau
    sign: np.ndarray | None = None  # bitmap: int8 per parameter, +1 / -1 / 0

    def add_into(self, out: np.ndarray, scale: float = 1.0) -> None:
        """``out += scale * update`` (sparse indices are unique, so fancy-index adds are exact)."""
        if out.shape != (self.length,):
            raise TransportError(f"update for {self.length} parameters applied to {out.shape[0]}")
        value = np.float32(self.tau * scale)
        if self.sign is not None:
            out += self.sign * value
        else:
            out[self.positive] += value
            out[self.negative] -= value

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) 0-based indices, whatever the format."""
        if self.sign is not None:
            return np.flatnonzero(self.sign > 0), np.flatnonzero(self.sign < 0)
        return self.positive, self.negative

    def dense(self) -> np.ndarray:
        out = np.zeros(self.length, dtype=np.float32)
        self.add_into(out)
        return out


def threshold_split(residual: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (0-based) of entries ``>= tau`` and ``<= -tau``; subtracts the sent +-tau from ``residual`` in place."""
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"threshold must be a positive finite number, got {tau!r}")
    t = np.float32(tau)
    positive = np.flatnonzero(residual >= t)
    negative = np.flatnonzero(residual <= -t)
    residual[positive] -= t
    residual[negative] += t
    return positive, negative


def _planes(length: int, up: np.ndarray, down: np.ndarray) -> bytes:
    """The two bit planes of a bitmap body from boolean masks."""
    return np.packbits(up, bitorder="little").tobytes() + np.packbits(down, bitorder="little").tobytes()


def _bitmap(length: int, positive: np.ndarray, negative: np.ndarray) -> bytes:
    up = np.zeros(length, dtype=bool)
    down = np.zeros(length, dtype=bool)
    up[positive] = True
    down[negative] = True
    return _planes(length, up, down)


def encode_indices(length: int, positive: np.ndarray, negative: np.ndarray, tau: float, step: int = 0,
                   origin: int = 0, msg_id: int = 0, fmt: int | None = None) -> bytes:  # fmt: skip
    """A message carrying +tau at ``positive`` and -tau at ``negative``; ``fmt`` None picks the smaller format."""
    if length > MAX_LENGTH:
        raise ConfigError(f"{length:,} parameters exceed the codec's int32 index range ({MAX_LENGTH:,})")
    count = len(positive) + len(negative)
    if fmt is None:
        fmt = BITMAP if count > length / 16 else SPARSE
    if fmt == SPARSE:
        idx = np.empty(count, dtype="<i4")
        idx[: len(positive)] = positive + 1
        idx[len(positive) :] = -(negative + 1)
        body = idx.tobytes()
    elif fmt == BITMAP:
        body = _bitmap(length, positive, negative)
    else:
        raise ConfigError(f"unknown codec format {fmt}")
    header = HEADER.pack(MAGIC, fmt, np.float32(tau), length, count, step, origin, msg_id, zlib.crc32(body))
    return header + body


def encode(residual: np.ndarray, tau: float, step: int = 0, origin: int = 0, msg_id: int = 0,
           fmt: int | None = None) -> tuple[bytes, int]:  # fmt: skip
    """Threshold-encode ``residual`` (float32, 1-D; updated in place: the sent part is removed).
    Returns the message and the number of entries sent."""
    if residual.dtype != np.float32 or residual.ndim != 1:
        raise ConfigError("the residual must be a 1-D float32 array")
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"threshold must be a positive finite number, got {tau!r}")
    length = len(residual)
    if length > MAX_LENGTH:
        raise ConfigError(f"{length:,} parameters exceed the codec's int32 index range ({MAX_LENGTH:,})")
    t = np.float32(tau)
    up, down = residual >= t, residual <= -t
    count = int(np.count_nonzero(up)) + int(np.count_nonzero(down))
    if fmt is None:
        fmt = BITMAP if count > length / 16 else SPARSE
    if fmt == BITMAP:  # straight from the masks: no index arrays
        residual -= (up.view(np.int8) - down.view(np.int8)) * t
        body = _planes(length, up, down)
        header = HEADER.pack(MAGIC, BITMAP, t, length, count, step, origin, msg_id, zlib.crc32(body))
        return header + body, count
    positive, negative = np.flatnonzero(up), np.flatnonzero(down)
    residual[positive] -= t
    residual[negative] += t
    return encode_indices(length, positive, negative, tau, step, origin, msg_id, fmt), count


def decode(message: bytes) -> Decoded:
    if len(message) < HEADER.size:
        raise TransportError(f"truncated update: {len(message)} bytes, the header alone is {HEADER.size}")
    magic, fmt, tau, length, count, step, origin, msg_id, crc = HEADER.unpack_from(message)
    if magic != MAGIC:
        raise TransportError(f"not a threshold-encoded update (magic {magic!r})")
    if fmt not in FORMATS:
        raise TransportError(f"unknown update format {fmt}")
    body = memoryview(message)[HEADER.size :]
    expected = 4 * count if fmt == SPARSE else 2 * -(-length // 8)
    if len(body) != expected:
        raise TransportError(f"{FORMATS[fmt]} update of {length} parameters / {count} entries needs {expected} body "
                             f"bytes, got {len(body)}")  # fmt: skip
    if zlib.crc32(body) != crc:
        raise TransportError(f"update from rank {origin} (step {step}) fails its checksum")
    if not (math.isfinite(tau) and tau > 0):
        raise TransportError(f"update carries an invalid threshold {tau!r}")
    if fmt == SPARSE:
        idx = np.frombuffer(body, dtype="<i4")
        positive, negative = idx[idx > 0] - 1, -idx[idx < 0] - 1
        if len(positive) + len(negative) != count or (count and np.abs(idx).max() > length):
            raise TransportError(f"sparse update has indices outside 1..{length}")
    else:
        planes = np.frombuffer(body, dtype=np.uint8)
        half = len(planes) // 2
        if length % 8 and ((planes[half - 1] >> (length % 8)) or (planes[-1] >> (length % 8))):
            raise TransportError("bitmap update has bits set past its length")
        up = np.unpackbits(planes[:half], count=length, bitorder="little")
        down = np.unpackbits(planes[half:], count=length, bitorder="little")
        if np.count_nonzero(up & down):
            raise TransportError("bitmap update marks a parameter both +tau and -tau")
        sign = up.view(np.int8) - down.view(np.int8)
        if np.count_nonzero(sign) != count:
            raise TransportError(f"bitmap update says {count} entries but holds {np.count_nonzero(sign)}")
        return Decoded(fmt, float(tau), length, count, step, origin, msg_id, sign=sign)
    return Decoded(fmt, float(tau), length, count, step, origin, msg_id, positive=positive, negative=negative)
