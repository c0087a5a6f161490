"""Error feedback: what a worker has not sent yet, and the clipping post-processor (DL4J's
ResidualClippingPostProcessor: every ``clip_every`` steps the residual is clipped to +-``clip_k`` x tau)."""
from __future__ import annotations

import numpy as np

from sparkdl.errors import ConfigError
from sparkdl.train.exchange.sharing import codec


class ResidualAccumulator:
    def __init__(self, length: int, clip_k: float = 5.0, clip_every: int = 5) -> None:
        if clip_k <= 0 or clip_every < 0:
            raise ConfigError(f"residual clip needs k > 0 and every >= 0 (0: never), got {clip_k}:{clip_every}")
        self.residual = np.zeros(length, dtype=np.float32)
        self.clip_k = float(clip_k)
        self.clip_every = int(clip_every)
        self.steps = 0

    def add(self, gradient: np.ndarray) -> None:
        self.residual += gradient

    def encode(self, tau: float, step: int = 0, origin: int = 0, limit: int | None = None) -> tuple[bytes, int]:
        """Send what passes the threshold (at most ``limit`` entries, the largest); the rest stays. Then count the
        step and clip when due."""
        message, sent = codec.encode(self.residual, tau, step, origin, limit=limit)
        self.steps += 1
        if self.clip_every and self.steps % self.clip_every == 0:
            bound = np.float32(self.clip_k * tau)
            np.clip(self.residual, -bound, bound, out=self.residual)
        return message, sent

    def norm(self) -> float:
        return float(np.linalg.norm(self.residual))

    def state_dict(self) -> dict:
        return {"residual": self.residual.copy(), "steps": self.steps, "clip_k": self.clip_k, "clip_every": self.clip_every}

    def load_state_dict(self, state: dict) -> None:
        residual = np.asarray(state["residual"], dtype=np.float32)
        if residual.shape != self.residual.shape:
            raise ConfigError(f"residual of {residual.shape[0]} entries loaded into one of {self.residual.shape[0]}")
        self.residual = residual.copy()
        self.steps = int(state["steps"])
        self.clip_k, self.clip_every = float(state["clip_k"]), int(state["clip_every"])
