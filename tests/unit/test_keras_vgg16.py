"""Keras VGG16 HDF5 -> torch: checked against an independent NHWC forward pass written in numpy.

The numpy reference uses the Keras layout as is (HWIO kernels, NHWC activations, NHWC flatten before fc1), so a
wrong transpose or a wrong fc1 row order in the converter shows up as a numeric mismatch.
"""
import h5py
import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from sparkdl.errors import ConfigError
from sparkdl.featurize import weights as wio
from sparkdl.featurize.backbones import load_backbone
from sparkdl.featurize.preprocess import CAFFE_BGR
from sparkdl.featurize.vgg import KERAS_CONV

pytestmark = pytest.mark.slow

CONV_SHAPES = {
    "block1_conv1": (3, 64), "block1_conv2": (64, 64),
    "block2_conv1": (64, 128), "block2_conv2": (128, 128),
    "block3_conv1": (128, 256), "block3_conv2": (256, 256), "block3_conv3": (256, 256),
    "block4_conv1": (256, 512), "block4_conv2": (512, 512), "block4_conv3": (512, 512),
    "block5_conv1": (512, 512), "block5_conv2": (512, 512), "block5_conv3": (512, 512),
}  # fmt: skip
DENSE_SHAPES = {"fc1": (25088, 4096), "fc2": (4096, 4096), "predictions": (4096, 1000)}


def _keras_layers(seed=0):
    rng = np.random.default_rng(seed)
    layers = {}
    for name, (cin, cout) in CONV_SHAPES.items():
        k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32) * np.float32(np.sqrt(2.0 / (9 * cin)))
        layers[name] = [k, rng.standard_normal(cout, dtype=np.float32) * np.float32(0.05)]
    for name, (cin, cout) in DENSE_SHAPES.items():
        k = rng.standard_normal((cin, cout), dtype=np.float32) * np.float32(np.sqrt(2.0 / cin))
        layers[name] = [k, rng.standard_normal(cout, dtype=np.float32) * np.float32(0.05)]
    return layers


def _write_keras2_h5(path, layers, order):
    """The layout of Keras 2 ``save_weights`` files such as vgg16_weights_tf_dim_ordering_tf_kernels.h5."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in order]
        for name in order:
            g = f.create_group(name)
            if name not in layers:
                g.attrs["weight_names"] = []
                continue
            wn = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            g.attrs["weight_names"] = wn
            for n, arr in zip(wn, layers[name]):
                g.create_dataset(n.decode(), data=arr)


def _keras_order(layers):
    order = ["input_1"]
    for name in CONV_SHAPES:
        order.append(name)
        if name.endswith(("1_conv2", "2_conv2", "3_conv3", "4_conv3", "5_conv3")):
            order.append(name.split("_")[0] + "_pool")
    return order + ["flatten", *[n for n in DENSE_SHAPES if n in layers]]


def _np_conv3x3_relu(x, k, b):
    padded = np.pad(x, ((1, 1), (1, 1), (0, 0)))
    windows = sliding_window_view(padded, (3, 3), axis=(0, 1))  # H, W, C, 3, 3
    out = np.tensordot(windows, k.transpose(2, 0, 1, 3), axes=([2, 3, 4], [0, 1, 2])) + b
    return np.maximum(out, 0)


def _np_reference(layers, image_hwc):
    x = image_hwc.astype(np.float64)
    for name in CONV_SHAPES:
        k, b = (a.astype(np.float64) for a in layers[name])
        x = _np_conv3x3_relu(x, k, b)
        if name.endswith(("1_conv2", "2_conv2", "3_conv3", "4_conv3", "5_conv3")):
            h, w, c = x.shape
            x = x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))
    flat = x.reshape(-1)  # Keras Flatten: NHWC order
    fc1 = np.maximum(flat @ layers["fc1"][0] + layers["fc1"][1], 0)
    fc2 = np.maximum(fc1 @ layers["fc2"][0] + layers["fc2"][1], 0)
    logits = fc2 @ layers["predictions"][0] + layers["predictions"][1]
    return fc2, logits


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    layers = _keras_layers()
    path = tmp_path_factory.mktemp("keras") / "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    _write_keras2_h5(path, layers, _keras_order(layers))
    return path, layers


def test_keras_conversion_matches_independent_nhwc_forward(keras_file):
    path, layers = keras_file
    loaded = load_backbone("vgg16", weights=path)
    assert loaded.weights_format == "keras"
    assert loaded.preprocess == CAFFE_BGR  # Keras VGG16 weights expect Caffe-style BGR input
    image = np.random.default_rng(1).uniform(-1, 1, size=(224, 224, 3)).astype(np.float32)
    fc2_ref, logits_ref = _np_reference(layers, image)
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].copy())
    fc2 = loaded(x)[0].numpy()
    with torch.inference_mode():
        logits = loaded.module.vgg(x)[0].numpy()
    assert fc2.shape == (4096,)
    assert np.count_nonzero(fc2_ref) > 500  # activations did not die: the check has teeth
    np.testing.assert_allclose(fc2, fc2_ref, rtol=1e-3, atol=1e-4 * np.abs(fc2_ref).max())
    np.testing.assert_allclose(logits, logits_ref, rtol=1e-3, atol=1e-4 * np.abs(logits_ref).max())


def test_converted_vgg16_round_trips_through_pth_and_safetensors(keras_file, tmp_path):
    path, _ = keras_file
    from_keras = load_backbone("vgg16", weights=path)
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 3, 224, 224), dtype=np.float32))
    expected = from_keras(x)
    for name in ("vgg16.pth", "vgg16.safetensors"):
        out = tmp_path / name
        wio.save_state_dict(from_keras.module.vgg, out)
        again = load_backbone("vgg16", weights=out)
        assert torch.equal(again(x), expected), name


def test_notop_and_theano_files_are_refused(tmp_path):
    layers = {n: [np.zeros((3, 3, ci, co), np.float32), np.zeros(co, np.float32)] for n, (ci, co) in CONV_SHAPES.items()}
    notop = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_keras2_h5(notop, layers, _keras_order(layers))
    with pytest.raises(ConfigError, match="no fc1/fc2 layers.*notop"):
        load_backbone("vgg16", weights=notop)
    th = {n: [np.zeros((co, ci, 3, 3), np.float32), np.zeros(co, np.float32)] for n, (ci, co) in CONV_SHAPES.items()}
    th.update({n: [np.zeros(s, np.float32), np.zeros(s[1], np.float32)] for n, s in DENSE_SHAPES.items()})
    theano = tmp_path / "vgg16_weights_th_dim_ordering_th_kernels.h5"
    _write_keras2_h5(theano, th, _keras_order(th))
    with pytest.raises(ConfigError, match="Theano-ordered"):
        load_backbone("vgg16", weights=theano)
    assert len(KERAS_CONV) == 13
