import numpy as np
import pytest
import torch

from sparkdl.config import HeadConfig, OptimizerConfig
from sparkdl.errors import ConfigError
from sparkdl.train.exchange.averaging import average
from sparkdl.train.rounds import sum_payloads, tree_levels
from sparkdl.model import HeadSpec, build_head
from sparkdl.train.local import (
    build_optimizer, fit_minibatches, get_optimizer_state, get_params, set_optimizer_state, set_params,
)  # fmt: skip


def test_heads():
    assert [type(m).__name__ for m in build_head(HeadConfig(), 8, 3)] == ["Linear"]
    mlp = build_head(HeadConfig.parse("mlp:16,4", dropout=0.2), 8, 3)
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    a, b = build_head(HeadConfig(), 8, 3, seed=1), build_head(HeadConfig(), 8, 3, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError, match="needs hidden sizes"):
        HeadConfig.parse("mlp")
    with pytest.raises(ConfigError, match="must be integers"):
        HeadConfig.parse("mlp:a,b")


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam"])
def test_optimizer_state_round_trips_and_continues_identically(name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 3, size=64)
    cfg = OptimizerConfig(name=name, lr=0.05, momentum=0.0 if name == "adam" else 0.9)
    ref = build_head(HeadConfig(), 8, 3, seed=3)
    ref_opt = build_optimizer(cfg, ref.parameters())
    fit_minibatches(ref, ref_opt, x, y, 8)
    fit_minibatches(ref, ref_opt, x, y, 8)
    # the same, but stopping after one pass and restoring params + optimizer state into fresh objects
    a = build_head(HeadConfig(), 8, 3, seed=3)
    a_opt = build_optimizer(cfg, a.parameters())
    fit_minibatches(a, a_opt, x, y, 8)
    params, state = get_params(a), get_optimizer_state(a_opt)
    b = build_head(HeadConfig(), 8, 3, seed=99)
    set_params(b, params)
    b_opt = build_optimizer(cfg, b.parameters())
    set_optimizer_state(b_opt, state)
    fit_minibatches(b, b_opt, x, y, 8)
    for k, v in get_params(ref).items():
        np.testing.assert_array_equal(get_params(b)[k], v)


def test_sum_and_average_of_worker_payloads():
    def payload(v):
        return {"params": {"w": np.full(3, v, np.float32)}, "opt": {"0.momentum_buffer": np.full(3, 2 * v, np.float32)},
                "loss_sum": v, "examples": 10, "minibatches": 2, "fit_seconds_max": v, "workers": 1}  # fmt: skip
    total = sum_payloads(sum_payloads(payload(1.0), payload(2.0)), payload(6.0))
    assert total["workers"] == 3 and total["examples"] == 30 and total["fit_seconds_max"] == 6.0
    np.testing.assert_array_equal(average(total["params"], 3)["w"], np.full(3, 3.0, np.float32))
    np.testing.assert_array_equal(average(total["opt"], 3)["0.momentum_buffer"], np.full(3, 6.0, np.float32))


@pytest.mark.parametrize("partitions, depth, levels", [(2, 2, 0), (4, 2, 0), (8, 2, 1), (16, 2, 1), (64, 2, 1), (64, 3, 2), (10, 1, 0)])
def test_tree_levels_match_pyspark(partitions, depth, levels):
    assert tree_levels(partitions, depth) == levels


def test_head_spec_round_trip():
    m = build_head(HeadConfig.parse("mlp:5"), 4, 2, seed=0)
    spec = HeadSpec.from_module(HeadConfig.parse("mlp:5"), 4, 2, m)
    x = torch.randn(3, 4)
    assert torch.equal(spec.build()(x), m.eval()(x))
