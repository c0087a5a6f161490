"""Threshold encoding of a residual (Strom 2015): entries with |r| >= tau leave as exactly +-tau, the rest stay.

A message says which of three body formats it carries; ``encode`` picks one per message from the count of entries to
send (the sizes are known before anything is written):

- **elias-fano** (the usual one): the sorted indices of the sent entries in Elias-Fano form, one bit string: the
  ``l = floor(log2(length / count))`` low bits of every index (entry by entry, least significant first), then an
  upper bitmap of ``count + ((length - 1) >> l)`` bits where entry i's high part h sets bit ``h + i``, then one sign
  bit per entry (1: -tau); zero-padded to a whole byte at the end. About ``log2(length / count) + 3`` bits an entry,
  whatever the spacing: 1.6 bytes at a density of 1e-3, where a plain int32 index takes 4;
- **bitmap**: 2 bits per parameter, two bit planes of ``ceil(length / 8)`` bytes (+tau, then -tau; little bit order,
  zero-padded); chosen above ``INDEX_DENSITY`` (1 %) sent, where the index formats' per-entry work would take the
  codec under 2 GB/s, whatever the sizes;
- **sparse**: one int32 per sent entry, the 1-based index carrying the sign (the first format; never the smallest
  unless ``count`` is tiny; kept for ``fmt=SPARSE`` and for measuring).

``encode(..., limit=n)`` sends at most n entries, the largest in magnitude; the rest stay in the residual.

Header (little-endian): magic ``TQ``, format (u8), tau (float32), CRC-32 of everything after it, then four unsigned
LEB128 varints: length (parameters), count (entries sent), step, origin rank — 19 bytes for a 1 M-parameter
message at step < 16,384, where the first format's header took 48. ``decode`` checks all of it and raises
``TransportError`` for anything malformed (truncated, wrong checksum, wrong length, unknown format, an index out of
range or repeated, a bitmap marking both signs, non-zero padding), so a bad message is never partly applied.
Everything is vectorized numpy: no Python loop over entries.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from sparkdl.errors import ConfigError, TransportError

MAGIC = b"TQ"
PREFIX = struct.Struct("<2sBfI")  # magic, format, tau, crc32 of the rest
SPARSE, BITMAP, ELIAS_FANO = 1, 2, 3
FORMATS = {SPARSE: "sparse", BITMAP: "bitmap", ELIAS_FANO: "elias-fano"}
MAX_LENGTH = 2**31 - 2  # 1-based signed int32 indices (the sparse format)
_MAX_VARINT = 10  # bytes of a 64-bit LEB128 value


@dataclass(frozen=True)
class Decoded:
    fmt: int
    tau: float
    length: int
    count: int
    step: int
    origin: int
    index: np.ndarray | None = None  # sparse / elias-fano: sorted 0-based indices of the sent entries
    negative: np.ndarray | None = None  # sparse / elias-fano: bool per sent entry, True for -tau
    up: np.ndarray | None = None  # bitmap: the +tau bit plane (uint8, little bit order)
    down: np.ndarray | None = None  # bitmap: the -tau bit plane

    def add_into(self, out: np.ndarray, scale: float = 1.0) -> None:
        """``out += scale * update`` (indices are unique, so fancy-index adds are exact)."""
        if out.shape != (self.length,):
            raise TransportError(f"update for {self.length} parameters applied to {out.shape[0]}")
        value = np.float32(self.tau * scale)
        if self.up is not None:
            add_signs(out, self.up, self.down, value)
        elif self.count:
            out[self.index] += np.where(self.negative, -value, value)

    def indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(positive, negative) 0-based indices, whatever the format."""
        if self.up is not None:
            unpack = lambda p: np.unpackbits(p, count=self.length, bitorder="little")  # noqa: E731
            return np.flatnonzero(unpack(self.up)), np.flatnonzero(unpack(self.down))
        return self.index[~self.negative], self.index[self.negative]

    def dense(self) -> np.ndarray:
        out = np.zeros(self.length, dtype=np.float32)
        self.add_into(out)
        return out


# ---------------------------------------------------------------------------------------------------- sizes
def _low_bits(length: int, count: int) -> int:
    """Elias-Fano's split: ``floor(log2(length / count))`` low bits (0 when count >= length / 2)."""
    return max(0, (length // count).bit_length() - 1) if count else 0


def _plane(n: int) -> int:
    return -(-n // 8)


def body_size(fmt: int, length: int, count: int) -> int:
    """Body bytes of a message of ``count`` entries over ``length`` parameters in format ``fmt``."""
    if fmt == SPARSE:
        return 4 * count
    if fmt == BITMAP:
        return 2 * _plane(length)
    if fmt == ELIAS_FANO:
        if count == 0:
            return 0
        low = _low_bits(length, count)
        return _plane(_ef_bits(length, count, low))
    raise ConfigError(f"unknown codec format {fmt}")


INDEX_DENSITY = 1 / 100  # above this fraction sent, the bitmap: its cost is flat, the index formats' grows per entry


def _ef_bits(length: int, count: int, low: int) -> int:
    """Bits of an elias-fano body: the low parts, the upper bitmap, the signs."""
    return count * low + count + ((length - 1) >> low) + count


def best_format(length: int, count: int) -> int:
    """The bitmap above ``INDEX_DENSITY`` (speed: per-entry work would drop the codec under 2 GB/s there, and such
    messages only leave a worker whose threshold is far off); else the format with the smallest body (ties:
    elias-fano, then bitmap)."""
    if count > length * INDEX_DENSITY:
        return BITMAP
    return min((ELIAS_FANO, BITMAP, SPARSE), key=lambda f: body_size(f, length, count))


# --------------------------------------------------------------------------------------------------- header
def _uvarint(value: int) -> bytes:
    if value < 0:
        raise ConfigError(f"codec header fields are non-negative, got {value}")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(buf: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(_MAX_VARINT):
        if at + i >= len(buf):
            raise TransportError("truncated update: the header ends inside a field")
        byte = buf[at + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at + i + 1
    raise TransportError("malformed update header: a field runs past 10 bytes")


def _message(fmt: int, tau: np.float32, length: int, count: int, step: int, origin: int, body: bytes) -> bytes:
    rest = _uvarint(length) + _uvarint(count) + _uvarint(step) + _uvarint(origin) + body
    return PREFIX.pack(MAGIC, fmt, tau, zlib.crc32(rest)) + rest


def header_size(length: int, count: int, step: int = 0, origin: int = 0) -> int:
    return PREFIX.size + sum(len(_uvarint(v)) for v in (length, count, step, origin))


# ----------------------------------------------------------------------------------------------------- bodies
CHUNK = 1 << 17  # parameters per pass of the dense kernels: their temporaries stay in the core's cache
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(plane: np.ndarray) -> int:
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return int(np.bitwise_count(plane).sum(dtype=np.int64))
    return int(_POPCOUNT[plane].sum(dtype=np.int64))


def add_signs(out: np.ndarray, up_plane: np.ndarray, down_plane: np.ndarray, value: np.float32) -> None:
    """``out += value * (up - down)`` for two bit planes, in cache-sized chunks (full-length temporaries would cost
    a trip to memory each, and a fresh 40 MB one its page faults too)."""
    n = len(out)
    sign = np.empty(min(n, CHUNK), np.int8)
    scaled = np.empty(min(n, CHUNK), np.float32)
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        pu, pd = up_plane[a // 8 : -(-b // 8)], down_plane[a // 8 : -(-b // 8)]
        if not (pu.any() or pd.any()):
            continue
        s, f = sign[: b - a], scaled[: b - a]
        u = np.unpackbits(pu, count=b - a, bitorder="little")
        d = np.unpackbits(pd, count=b - a, bitorder="little")
        np.subtract(u.view(np.int8), d.view(np.int8), out=s)
        np.copyto(f, s, casting="unsafe")
        np.multiply(f, value, out=f)
        np.add(out[a:b], f, out=out[a:b])


def threshold_scan(residual: np.ndarray, t: np.float32, subtract: bool):
    """One pass over ``residual`` in cache-sized chunks: the bit planes of the entries ``>= t`` and ``<= -t`` and
    their count; also the sorted (indices, is-negative) of those entries while every chunk stays at or under
    ``INDEX_DENSITY`` (what the index formats need), else None. ``subtract``: the sent part leaves the residual in
    the same pass (``residual -= t * (up - down)``); else nothing changes."""
    n = len(residual)
    up_plane, down_plane = np.empty(_plane(n), np.uint8), np.empty(_plane(n), np.uint8)
    width = min(n, CHUNK)
    u, d, s, f = np.empty(width, bool), np.empty(width, bool), np.empty(width, np.int8), np.empty(width, np.float32)
    count = 0
    hits: list | None = []
    for a in range(0, n, CHUNK):
        b = min(n, a + CHUNK)
        x, uc, dc = residual[a:b], u[: b - a], d[: b - a]
        np.greater_equal(x, t, out=uc)
        np.less_equal(x, -t, out=dc)
        up_plane[a // 8 : -(-b // 8)] = np.packbits(uc, bitorder="little")
        down_plane[a // 8 : -(-b // 8)] = np.packbits(dc, bitorder="little")
        k = int(np.count_nonzero(uc)) + int(np.count_nonzero(dc))
        if not k:
            continue
        count += k
        hit = None
        if hits is not None and k <= (b - a) * INDEX_DENSITY:
            hit = np.flatnonzero(np.logical_or(uc, dc))
            hits.append((hit + a, dc[hit]))
        else:
            hits = None
        if not subtract:
            continue
        if hit is not None:  # a few entries: touch just them
            x[hit] -= np.where(hits[-1][1], -t, t)
        else:
            sc, fc = s[: b - a], f[: b - a]
            np.subtract(uc.view(np.int8), dc.view(np.int8), out=sc)
            np.copyto(fc, sc, casting="unsafe")
            np.multiply(fc, t, out=fc)
            np.subtract(x, fc, out=x)
    if hits is not None:
        hits = ((np.concatenate([h for h, _ in hits]), np.concatenate([g for _, g in hits])) if hits
                else (np.empty(0, np.int64), np.empty(0, bool)))  # fmt: skip
    return up_plane, down_plane, count, hits


def plane_indices(up_plane: np.ndarray, down_plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted 0-based indices of the bits set in either plane, and for each whether it is in ``down_plane``; only
    the non-zero bytes are unpacked (cheap at the densities the index formats are chosen for)."""
    nz = np.flatnonzero(up_plane | down_plane)
    bu = np.unpackbits(up_plane[nz][:, None], axis=1, bitorder="little")
    bd = np.unpackbits(down_plane[nz][:, None], axis=1, bitorder="little")
    rows, cols = np.nonzero(bu | bd)  # row-major: sorted by byte, then bit
    return nz[rows].astype(np.int64) * 8 + cols, bd[rows, cols].view(bool)


def _bits(mask: np.ndarray) -> bytes:
    return np.packbits(mask, bitorder="little").tobytes()


def _elias_fano(length: int, idx: np.ndarray, negative: np.ndarray) -> bytes:
    """Body for the sorted, unique 0-based ``idx`` (``negative``: bool per entry, True for -tau): one bit string of
    the ``low`` low bits of every index (entry by entry, least significant first), the upper bitmap (entry i's high
    part ``h`` sets bit ``h + i``), the signs; padded with zero bits to a whole byte at the end only."""
    count = len(idx)
    if count == 0:
        return b""
    low = _low_bits(length, count)
    idx = idx.astype(np.int64, copy=False)
    bits = np.zeros(_ef_bits(length, count, low), dtype=np.uint8)
    if low:
        width = 1 << max(0, (low - 1).bit_length() - 3)  # bytes holding the low part: 1, 2, 4 or 8
        small = (idx & ((1 << low) - 1)).astype(f"<u{width}")
        lows = np.unpackbits(small.view(np.uint8).reshape(count, width), axis=1, bitorder="little")
        bits[: count * low] = lows[:, :low].ravel()
    upper_at = count * low
    bits[upper_at + (idx >> low) + np.arange(count)] = 1
    bits[upper_at + count + ((length - 1) >> low) :] = negative
    return np.packbits(bits, bitorder="little").tobytes()


def _bitmap(length: int, positive: np.ndarray, negative: np.ndarray) -> bytes:
    """Bitmap body: the +tau plane, then the -tau plane."""
    up, down = np.zeros(length, bool), np.zeros(length, bool)
    up[positive], down[negative] = True, True
    if np.any(up & down):
        raise ConfigError("an entry cannot be sent both +tau and -tau")
    return _bits(up) + _bits(down)


def _sparse(idx: np.ndarray, negative: np.ndarray) -> bytes:
    return np.where(negative, -(idx + 1), idx + 1).astype("<i4").tobytes()


def _unbits(data, nbits: int, what: str) -> np.ndarray:
    """``nbits`` bits (uint8 0/1) from ``data``; ``TransportError`` when the padding past them is not zero."""
    if nbits % 8 and data[-1] >> (nbits % 8):
        raise TransportError(f"{what} has bits set past its end")
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=nbits, bitorder="little")


def _decode_elias_fano(body, length: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    if count == 0:
        return np.empty(0, np.int64), np.empty(0, bool)
    low = _low_bits(length, count)
    bits = _unbits(body, _ef_bits(length, count, low), "elias-fano update")
    idx = np.zeros(count, dtype=np.int64)
    if low:
        packed = np.packbits(bits[: count * low].reshape(count, low), axis=1, bitorder="little")
        for k in range(packed.shape[1]):  # byte k of every low part
            idx |= packed[:, k].astype(np.int64) << (8 * k)
    upper_at = count * low
    upper_bits = count + ((length - 1) >> low)
    ones = np.flatnonzero(bits[upper_at : upper_at + upper_bits])
    if len(ones) != count:
        raise TransportError(f"elias-fano update says {count} entries but its upper bitmap holds {len(ones)}")
    idx |= (ones - np.arange(count)) << low
    if count > 1 and not np.all(idx[1:] > idx[:-1]):
        raise TransportError("elias-fano update repeats an index")
    if idx[-1] >= length:
        raise TransportError(f"elias-fano update has an index outside 0..{length - 1}")
    return idx, bits[upper_at + upper_bits :].view(bool)


# ------------------------------------------------------------------------------------------------ encode/decode
def _check(length: int, tau: float) -> np.float32:
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"threshold must be a positive finite number, got {tau!r}")
    if length > MAX_LENGTH:
        raise ConfigError(f"{length:,} parameters exceed the codec's int32 index range ({MAX_LENGTH:,})")
    return np.float32(tau)


def threshold_split(residual: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices (0-based) of entries ``>= tau`` and ``<= -tau``; subtracts the sent +-tau from ``residual`` in place."""
    t = _check(len(residual), tau)
    positive = np.flatnonzero(residual >= t)
    negative = np.flatnonzero(residual <= -t)
    residual[positive] -= t
    residual[negative] += t
    return positive, negative


def encode_indices(length: int, positive: np.ndarray, negative: np.ndarray, tau: float, step: int = 0,
                   origin: int = 0, fmt: int | None = None) -> bytes:  # fmt: skip
    """A message carrying +tau at ``positive`` and -tau at ``negative`` (disjoint); ``fmt`` None: the smallest."""
    t = _check(length, tau)
    positive, negative = np.asarray(positive, np.int64), np.asarray(negative, np.int64)
    count = len(positive) + len(negative)
    fmt = best_format(length, count) if fmt is None else fmt
    if fmt == BITMAP:
        body = _bitmap(length, positive, negative)
    elif fmt in (ELIAS_FANO, SPARSE):
        idx = np.concatenate([positive, negative])
        neg = np.concatenate([np.zeros(len(positive), bool), np.ones(len(negative), bool)])
        order = np.argsort(idx, kind="stable")
        idx, neg = idx[order], neg[order]
        if count > 1 and not np.all(idx[1:] > idx[:-1]):
            raise ConfigError("an entry cannot be sent twice, or both +tau and -tau")
        body = _elias_fano(length, idx, neg) if fmt == ELIAS_FANO else _sparse(idx, neg)
    else:
        raise ConfigError(f"unknown codec format {fmt}")
    return _message(fmt, t, length, count, step, origin, body)


def encode(residual: np.ndarray, tau: float, step: int = 0, origin: int = 0, fmt: int | None = None,
           limit: int | None = None) -> tuple[bytes, int]:  # fmt: skip
    """Threshold-encode ``residual`` (float32, 1-D; updated in place: the sent part is removed). ``limit``: when more
    than this many entries reach tau, only the ``limit`` largest in magnitude are sent (the rest stay, as any entry
    under tau does). Returns the message and the number of entries sent."""
    if residual.dtype != np.float32 or residual.ndim != 1:
        raise ConfigError("the residual must be a 1-D float32 array")
    length = len(residual)
    t = _check(length, tau)
    if limit is not None and not (isinstance(limit, (int, np.integer)) and limit >= 1):
        raise ConfigError(f"the message limit must be a positive number of entries, got {limit!r}")
    up, down, count, hits = threshold_scan(residual, t, subtract=limit is None)
    if limit is not None and count > limit:
        idx, neg = hits if hits is not None else plane_indices(up, down)
        keep = np.sort(np.argpartition(np.abs(residual[idx]), count - limit)[count - limit :])
        hits, count, up = (idx[keep], neg[keep]), int(limit), None
    fmt = best_format(length, count) if fmt is None else fmt
    idx, neg = hits if hits is not None else (None, None)
    if limit is not None:  # the scan left the residual alone: what is sent leaves it now
        if idx is not None:
            residual[idx] -= np.where(neg, -t, t)
        else:
            add_signs(residual, up, down, -t)
    if fmt == BITMAP:
        body = up.tobytes() + down.tobytes() if up is not None else _bitmap(length, idx[~neg], idx[neg])
    elif fmt in (ELIAS_FANO, SPARSE):
        if idx is None:  # some chunk was dense: the scan collected no indices
            idx, neg = plane_indices(up, down)
        body = _elias_fano(length, idx, neg) if fmt == ELIAS_FANO else _sparse(idx, neg)
    else:
        raise ConfigError(f"unknown codec format {fmt}")
    return _message(fmt, t, length, count, step, origin, body), count


def decode(message: bytes) -> Decoded:
    if len(message) < PREFIX.size:
        raise TransportError(f"truncated update: {len(message)} bytes, the header alone is at least {PREFIX.size + 4}")
    magic, fmt, tau, crc = PREFIX.unpack_from(message)
    if magic != MAGIC:
        raise TransportError(f"not a threshold-encoded update (magic {magic!r})")
    if fmt not in FORMATS:
        raise TransportError(f"unknown update format {fmt}")
    if zlib.crc32(memoryview(message)[PREFIX.size :]) != crc:
        raise TransportError("update fails its checksum")
    at = PREFIX.size
    length, at = _read_uvarint(message, at)
    count, at = _read_uvarint(message, at)
    step, at = _read_uvarint(message, at)
    origin, at = _read_uvarint(message, at)
    if not (math.isfinite(tau) and tau > 0):
        raise TransportError(f"update from rank {origin} (step {step}) carries an invalid threshold {tau!r}")
    if not 0 < length <= MAX_LENGTH or count > length:
        raise TransportError(f"update from rank {origin} (step {step}) claims {count} of {length} parameters")
    body = memoryview(message)[at:]
    expected = body_size(fmt, length, count)
    if len(body) != expected:
        raise TransportError(f"{FORMATS[fmt]} update of {length} parameters / {count} entries needs {expected} body "
                             f"bytes, got {len(body)}")  # fmt: skip
    head = (fmt, float(tau), length, count, step, origin)
    if fmt == SPARSE:
        raw = np.frombuffer(body, dtype="<i4").astype(np.int64)
        idx, neg = np.abs(raw) - 1, raw < 0
        if count and (idx.min() < 0 or idx.max() >= length):
            raise TransportError(f"sparse update has indices outside 1..{length}")
        order = np.argsort(idx, kind="stable")
        idx, neg = idx[order], neg[order]
        if count > 1 and not np.all(idx[1:] > idx[:-1]):
            raise TransportError("sparse update repeats an index")
        return Decoded(*head, index=idx, negative=neg)
    if fmt == ELIAS_FANO:
        idx, neg = _decode_elias_fano(body, length, count)
        return Decoded(*head, index=idx, negative=neg)
    plane = len(body) // 2
    up = np.frombuffer(body[:plane], dtype=np.uint8)
    down = np.frombuffer(body[plane:], dtype=np.uint8)
    if length % 8 and (up[-1] >> (length % 8) or down[-1] >> (length % 8)):
        raise TransportError("bitmap update has bits set past its length")
    held = _popcount(up) + _popcount(down)
    if held != count:
        raise TransportError(f"bitmap update says {count} entries but holds {held}")
    if np.any(up & down):
        raise TransportError("bitmap update marks a parameter both +tau and -tau")
    return Decoded(*head, up=up, down=down)
