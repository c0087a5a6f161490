"""How each worker picks its threshold tau, step by step (Deeplearning4j's threshold algorithms, adapted).

``observe(sent, length)`` after every encoding; ``threshold()`` for the next one; ``limit(length)``: the most entries
one message may carry (the largest in magnitude go first, the rest wait in the residual). Workers average their
thresholds at epoch end (``set_threshold``) and carry them over.

- ``fixed:T`` — always T, no limit.
- ``adaptive[:T0]`` — DL4J's AdaptiveThresholdAlgorithm, with a tighter band and a message limit: keep the fraction
  of entries sent inside ``[1e-4, top]``, ``top = max(2e-3, 128 / length)``; below the band tau shrinks by the decay
  (0.965936 = 0.5 ** (1/20) per step), at or above its top it grows by it; no message carries more than ``top`` of
  the entries. DL4J's band is [1e-4, 1e-2] with no limit: on a 1 M-parameter head, bursts (a class's row of
  weights at once) then send 1-3 % of the entries in a step and hold most of the bytes (BENCHMARKS.md, issue 15).
  The 128 entries floor keeps small heads at DL4J's band (12,810 parameters: 1e-2): their messages are ~100 bytes
  whatever the band, and a top of 2e-3 (25 entries) cost them 2.5 points of accuracy.
  Starts at T0 (default 1e-4). On the first step, if T0 would send a fraction outside the band, tau starts instead
  at the quantile of the first residual that sends the band's geometric middle. At the decay's pace a badly placed
  T0 takes hundreds of steps (here: 220 steps from 1e-4, over half of a 10-epoch demo run), sending dense-sized
  messages all along.
- ``target-sparsity:S`` — aim at a fraction S of entries sent: below it tau shrinks, above it grows (same decay);
  calibrated on the first step the same way; no message carries more than 2 S of the entries.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

from sparkdl.config import ThresholdConfig
from sparkdl.errors import ConfigError

DECAY = 0.965936  # 0.5 ** (1 / 20): tau halves (or doubles) over 20 steps out of band
MIN_TAU, MAX_TAU = 1e-12, 1e6


class ThresholdAlgorithm(ABC):
    def __init__(self, tau: float) -> None:
        self.tau = _check_tau(tau)
        self.last_sparsity = 0.0

    def threshold(self) -> float:
        return self.tau

    def limit(self, length: int) -> int | None:
        """The most entries one message of a ``length``-parameter model may carry, or None (no limit)."""
        return None

    def calibrate(self, residual) -> None:  # noqa: B027 - optional hook, called before every encoding
        """Look at the residual about to be encoded (the adaptive algorithms use the first one)."""

    def observe(self, sent: int, length: int) -> None:
        self.last_sparsity = sent / max(1, length)
        self._adjust(self.last_sparsity, length)

    @abstractmethod
    def _adjust(self, sparsity: float, length: int) -> None: ...

    def set_threshold(self, tau: float) -> None:
        self.tau = _check_tau(tau)

    def state_dict(self) -> dict:
        return {"tau": self.tau, "last_sparsity": self.last_sparsity}

    def load_state_dict(self, state: dict) -> None:
        self.tau, self.last_sparsity = _check_tau(state["tau"]), float(state["last_sparsity"])


def _check_tau(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ConfigError(f"threshold must be a positive number, got {tau!r}")
    return float(tau)


class FixedThreshold(ThresholdAlgorithm):
    def _adjust(self, sparsity: float, length: int) -> None:
        return None


def _quantile_tau(residual, fraction: float) -> float | None:
    """The tau that sends about ``fraction`` of ``residual``'s entries (None when the residual is all zeros)."""
    import numpy as np

    magnitudes = np.abs(residual)
    k = max(1, int(round(fraction * len(magnitudes))))
    tau = float(np.partition(magnitudes, len(magnitudes) - k)[len(magnitudes) - k])
    return tau if tau > 0 else None


class _Calibrated(ThresholdAlgorithm):
    """A band of fractions sent, ``band(length) -> (low, high)``; the first step calibrates tau into it, aiming at
    the band's geometric middle; no message carries more than ``high`` of the entries."""

    def __init__(self, tau: float) -> None:
        super().__init__(tau)
        self.calibrated = False

    @abstractmethod
    def band(self, length: int) -> tuple[float, float]: ...

    def limit(self, length: int) -> int | None:
        return max(1, int(self.band(length)[1] * length))

    def calibrate(self, residual) -> None:
        if self.calibrated or len(residual) == 0:
            return
        import numpy as np

        if not np.any(residual):
            return  # nothing to learn from an all-zero residual (a worker without rows yet)
        self.calibrated = True
        low, high = self.band(len(residual))
        fraction = float(np.count_nonzero(np.abs(residual) >= self.tau)) / len(residual)
        if not low <= fraction <= high:
            tau = _quantile_tau(residual, math.sqrt(low * high))
            if tau is not None:
                self.tau = tau

    def state_dict(self) -> dict:
        return {**super().state_dict(), "calibrated": self.calibrated}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.calibrated = bool(state.get("calibrated", True))


class AdaptiveThreshold(_Calibrated):
    def __init__(self, tau: float = 1e-4, min_sparsity: float = 1e-4, max_sparsity: float = 2e-3,
                 min_entries: int = 128, decay: float = DECAY) -> None:  # fmt: skip
        super().__init__(tau)
        if not 0 < min_sparsity <= max_sparsity < 1 or not 0 < decay < 1 or min_entries < 1:
            raise ConfigError("adaptive threshold needs 0 < min_sparsity <= max_sparsity < 1, 0 < decay < 1 and "
                              "min_entries >= 1")  # fmt: skip
        self.min_sparsity, self.max_sparsity, self.min_entries, self.decay = min_sparsity, max_sparsity, min_entries, decay

    def band(self, length: int) -> tuple[float, float]:
        high = min(0.5, max(self.max_sparsity, self.min_entries / max(1, length)))
        return min(self.min_sparsity, high), high

    def _adjust(self, sparsity: float, length: int) -> None:
        low, high = self.band(length)
        if sparsity < low:
            self.tau = max(MIN_TAU, self.tau * self.decay)
        elif sparsity >= high:  # at the limit: the message had more to send
            self.tau = min(MAX_TAU, self.tau / self.decay)


class TargetSparsityThreshold(_Calibrated):
    def __init__(self, target: float = 1e-3, tau: float = 1e-4, decay: float = DECAY) -> None:
        super().__init__(tau)
        if not 0 < target < 1:
            raise ConfigError(f"target sparsity must be in (0, 1), got {target!r}")
        self.target, self.decay = target, decay

    def band(self, length: int) -> tuple[float, float]:
        return self.target / 2, min(1.0, self.target * 2)

    def _adjust(self, sparsity: float, length: int) -> None:
        if sparsity < self.target:
            self.tau = max(MIN_TAU, self.tau * self.decay)
        else:
            self.tau = min(MAX_TAU, self.tau / self.decay)


def build_threshold(config: ThresholdConfig) -> ThresholdAlgorithm:
    """The algorithm a ``ThresholdConfig`` names (parsed and range-checked there)."""
    if config.kind == "adaptive":
        return AdaptiveThreshold(config.value if config.value is not None else 1e-4)
    if config.kind == "fixed":
        return FixedThreshold(config.value)
    return TargetSparsityThreshold(config.value if config.value is not None else 1e-3)


def parse_threshold(spec: str) -> ThresholdAlgorithm:
    """``adaptive``, ``adaptive:1e-4``, ``fixed:1e-3`` or ``target-sparsity:1e-3`` (``ThresholdConfig.parse``)."""
    return build_threshold(ThresholdConfig.parse(spec))
