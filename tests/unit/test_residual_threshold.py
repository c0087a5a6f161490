"""Error feedback (exact invariant, clipping) and the threshold algorithms."""
import numpy as np
import pytest

from sparkdl.errors import ConfigError
from sparkdl.train.exchange.sharing import codec
from sparkdl.train.exchange.sharing.residual import ResidualAccumulator
from sparkdl.train.exchange.sharing.threshold import (
    DECAY, AdaptiveThreshold, FixedThreshold, TargetSparsityThreshold, parse_threshold,
)  # fmt: skip


def test_sent_plus_residual_equals_the_gradients():
    """Sum of everything sent + what is left == sum of every gradient added (per worker), to float rounding."""
    rng = np.random.default_rng(1)
    acc = ResidualAccumulator(5000, clip_every=0)
    grads = np.zeros(5000, np.float64)
    sent = np.zeros(5000, np.float64)
    for step in range(60):
        g = (rng.standard_normal(5000) * 1e-3).astype(np.float32)
        grads += g
        acc.add(g)
        message, n = acc.encode(tau=2e-3, step=step)
        sent += codec.decode(message).dense()
    np.testing.assert_allclose(sent + acc.residual, grads, rtol=0, atol=1e-6)
    assert sent.any() and acc.residual.any()  # both parts non-trivial (one step sends at most one tau per entry)


def test_clipping_bounds_the_residual_every_n_steps():
    acc = ResidualAccumulator(10, clip_k=2.0, clip_every=3)
    big = np.full(10, 0.9, np.float32)  # never reaches tau = 1 alone ... but accumulates
    for step in range(1, 7):
        acc.add(big)
        acc.encode(tau=1.0)
        if step % 3 == 0:
            assert np.all(np.abs(acc.residual) <= 2.0)
    state = acc.state_dict()
    other = ResidualAccumulator(10)
    other.load_state_dict(state)
    assert np.array_equal(other.residual, acc.residual) and other.steps == 6 and other.clip_every == 3
    with pytest.raises(ConfigError):
        ResidualAccumulator(11).load_state_dict(state)


def test_fixed_threshold_never_moves():
    t = parse_threshold("fixed:1e-3")
    t.observe(1000, 1000)
    assert isinstance(t, FixedThreshold) and t.threshold() == 1e-3


def test_adaptive_keeps_the_band_dl4j_style():
    t = parse_threshold("adaptive")
    assert isinstance(t, AdaptiveThreshold) and t.threshold() == 1e-4
    t.calibrated = True  # decay rule alone
    t.observe(5, 10_000)  # 5e-4: inside [1e-4, 1.28e-2] (128 entries of 10,000) -> unchanged
    assert t.threshold() == 1e-4
    t.observe(0, 10_000)  # below the band: tau shrinks
    assert t.threshold() == pytest.approx(1e-4 * DECAY)
    t.set_threshold(1e-4)
    t.observe(500, 10_000)  # above: tau grows
    assert t.threshold() == pytest.approx(1e-4 / DECAY)
    t.set_threshold(1e-4)
    t.observe(2000, 1_000_000)  # a 1 M-parameter message at the limit (2e-3): tau grows
    assert t.threshold() == pytest.approx(1e-4 / DECAY)
    assert DECAY ** 20 == pytest.approx(0.5, rel=1e-4)


def test_band_and_message_limit_follow_the_model_size():
    t = AdaptiveThreshold()
    assert t.band(1_000_000) == (1e-4, 2e-3) and t.limit(1_000_000) == 2000
    assert t.band(12_810)[1] == pytest.approx(128 / 12_810) and t.limit(12_810) == 128  # the demo head: DL4J's 1e-2
    assert t.band(100) == (1e-4, 0.5) and t.limit(100) == 50
    assert parse_threshold("fixed:1e-3").limit(10**6) is None
    assert parse_threshold("target-sparsity:1e-3").limit(10**6) == 2000


def test_first_step_calibration_lands_in_the_band():
    rng = np.random.default_rng(0)
    r = rng.standard_normal(100_000).astype(np.float32)
    t = AdaptiveThreshold()  # 1e-4 would send nearly everything
    t.calibrate(r)
    fraction = np.mean(np.abs(r) >= t.threshold())
    middle = np.sqrt(1e-4 * 2e-3)  # the band of 100,000 parameters: [1e-4, 2e-3]
    assert 1e-4 <= fraction <= 2e-3 and fraction == pytest.approx(middle, rel=0.05)
    before = t.threshold()
    t.calibrate(r * 100)  # only the first residual calibrates
    assert t.threshold() == before
    inside = AdaptiveThreshold(tau=float(np.quantile(np.abs(r), 1 - 1e-3)))
    kept = inside.threshold()
    inside.calibrate(r)  # already in the band: T0 kept
    assert inside.threshold() == kept


def test_a_limited_message_sends_the_largest_and_keeps_the_rest_exactly():
    rng = np.random.default_rng(3)
    acc = ResidualAccumulator(50_000, clip_every=0)
    g = (rng.standard_normal(50_000) * 1e-3).astype(np.float32)
    acc.add(g)
    before = acc.residual.copy()
    message, sent = acc.encode(tau=1e-3, limit=100)  # ~16,000 entries reach tau: the 100 largest go
    dec = codec.decode(message)
    assert sent == dec.count == 100
    up, down = dec.indices()
    chosen = np.concatenate([up, down])
    assert np.all(np.abs(before[chosen]) >= np.sort(np.abs(before))[-100])  # the largest magnitudes
    np.testing.assert_array_equal(np.delete(acc.residual, chosen), np.delete(before, chosen))  # the rest untouched
    np.testing.assert_allclose(acc.residual + dec.dense(), before, rtol=0, atol=1e-9)
    assert codec.encode(before.copy(), 1e-3, limit=10**6)[1] == int(np.sum(np.abs(before) >= np.float32(1e-3)))


def test_target_sparsity():
    t = parse_threshold("target-sparsity:0.01")
    assert isinstance(t, TargetSparsityThreshold)
    t.calibrated = True
    t.observe(0, 100)
    assert t.threshold() == pytest.approx(1e-4 * DECAY)
    t.observe(50, 100)
    assert t.threshold() == pytest.approx(1e-4)


@pytest.mark.parametrize("spec", ["fixed", "bogus:1", "fixed:abc", "fixed:-1", "target-sparsity:2"])
def test_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_threshold(spec)
