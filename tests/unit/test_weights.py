"""Weight files: each format round-trips into the backbones; errors name what does not fit."""
import h5py
import numpy as np
import pytest
import torch

from sparkdl.errors import ConfigError
from sparkdl.featurize import weights as wio
from sparkdl.featurize.backbones import load_backbone


def _perturbed_tiny_state():
    base = load_backbone("tiny").module.state_dict()
    g = torch.Generator().manual_seed(7)
    return {k: v + torch.randn(v.shape, generator=g) for k, v in base.items()}


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".safetensors"])
def test_state_dict_round_trip(tmp_path, suffix):
    state = _perturbed_tiny_state()
    path = tmp_path / f"tiny{suffix}"
    wio.save_state_dict(state, path)
    loaded = load_backbone("tiny", weights=path)
    got = loaded.module.state_dict()
    assert set(got) == set(state)
    for k in state:
        assert torch.equal(got[k], state[k]), k
    assert loaded.weights == str(path)
    assert loaded.weights_format == ("safetensors" if suffix == ".safetensors" else "torch")


def test_checkpoint_wrappers_are_unwrapped(tmp_path):
    state = _perturbed_tiny_state()
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    got = load_backbone("tiny", weights=path).module.state_dict()
    assert all(torch.equal(got[k], state[k]) for k in state)


def test_wrong_architecture_is_named(tmp_path):
    path = tmp_path / "tiny.pth"
    wio.save_state_dict(_perturbed_tiny_state(), path)
    with pytest.raises(ConfigError, match=r"do not fit the EfficientNet architecture: \d+ missing.*\d+ unexpected"):
        load_backbone("efficientnet_lite0", weights=path)
    state = _perturbed_tiny_state()
    state["body.0.weight"] = torch.zeros(4, 3, 3, 3)
    wio.save_state_dict(state, path)
    with pytest.raises(ConfigError, match=r"1 of the wrong shape.*body\.0\.weight: file \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        load_backbone("tiny", weights=path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the format"):
        load_backbone("tiny", weights=tmp_path / "w.onnx")
    with pytest.raises(ConfigError, match="does not exist"):
        load_backbone("tiny", weights=tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError, match="not a loadable torch state dict"):
        load_backbone("tiny", weights=junk)
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"\x00" * 20)
    with pytest.raises(ConfigError, match="not a valid safetensors file"):
        load_backbone("tiny", weights=junk_st)
    with pytest.raises(ConfigError, match="cannot load Keras HDF5"):
        h5 = tmp_path / "x.h5"
        with h5py.File(h5, "w") as f:
            f.attrs["layer_names"] = [b"dense"]
        load_backbone("tiny", weights=h5)


def test_vgg16_needs_weights_unless_random_init():
    with pytest.raises(ConfigError, match="needs pretrained weights: pass --weights"):
        load_backbone("vgg16")


def test_read_keras2_and_keras3_layouts(tmp_path):
    k = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    b = np.arange(4, dtype=np.float32)
    p2 = tmp_path / "k2.h5"
    with h5py.File(p2, "w") as f:
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = [b"conv", b"pool"]
        c = g.create_group("conv")
        c.attrs["weight_names"] = [b"conv/kernel:0", b"conv/bias:0"]
        c.create_dataset("conv/kernel:0", data=k)
        c.create_dataset("conv/bias:0", data=b)
        p = g.create_group("pool")
        p.attrs["weight_names"] = []
    got = wio.read_keras_h5(p2)
    assert list(got) == ["conv"]
    np.testing.assert_array_equal(got["conv"][0], k)
    np.testing.assert_array_equal(got["conv"][1], b)
    p3 = tmp_path / "k3.weights.h5"
    with h5py.File(p3, "w") as f:
        v = f.create_group("layers/conv/vars")
        v.create_dataset("0", data=k)
        v.create_dataset("1", data=b)
        f.create_group("layers/pool/vars")
    got = wio.read_keras_h5(p3)
    assert list(got) == ["conv"]
    np.testing.assert_array_equal(got["conv"][0], k)


def test_driver_check_matches_load_and_catches_misfits_without_building(tmp_path):
    from sparkdl.featurize.backbones import check_backbone

    for name, kwargs in [("tiny", {}), ("efficientnet_lite0", {}), ("vgg16", {"random_init": True})]:
        assert check_backbone(name, **kwargs) == load_backbone(name, **kwargs).describe()
    path = tmp_path / "tiny.pth"
    wio.save_state_dict(_perturbed_tiny_state(), path)
    with pytest.raises(ConfigError, match="do not fit the VGG16 architecture"):
        check_backbone("vgg16", weights=path)
