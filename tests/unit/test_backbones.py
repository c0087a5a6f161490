import numpy as np
import pytest
import torch
from PIL import Image

from sparkdl.errors import ConfigError
from sparkdl.featurize.backbones import get_backbone, list_backbones, load_backbone
from sparkdl.featurize.vgg import VGG16

TORCHVISION_VGG16 = {
    **{f"features.{i}.weight": s for i, s in zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
        [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3), (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3),
         (256, 256, 3, 3), (512, 256, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3), (512, 512, 3, 3),
         (512, 512, 3, 3)])},
    **{f"features.{i}.bias": (n,) for i, n in zip(
        (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512))},
    "classifier.0.weight": (4096, 25088), "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096), "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}  # fmt: skip


def test_registry():
    assert list_backbones() == ["efficientnet_lite0", "tiny", "vgg16"]
    assert get_backbone("vgg16").feature_dim == 4096
    assert get_backbone("efficientnet_lite0").feature_dim == 1280
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9'; choose one of efficientnet_lite0, tiny, vgg16"):
        get_backbone("resnet9")


def test_vgg16_has_torchvision_state_dict_keys():
    sd = VGG16().state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == TORCHVISION_VGG16


@pytest.mark.parametrize("name, dim", [("tiny", 16), ("efficientnet_lite0", 1280)])
def test_feature_shapes(name, dim):
    b = load_backbone(name)
    x = torch.zeros(3, 3, b.preprocess.crop, b.preprocess.crop)
    assert tuple(b(x).shape) == (3, dim)


def test_seeded_init_is_the_same_in_every_process_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = load_backbone("tiny").module.state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = load_backbone("tiny").module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_efficientnet_lite0_embedded_weights_recognise_real_photos():
    """The embedded ImageNet weights + our preprocessing classify scikit-learn's two bundled photos correctly."""
    from sklearn.datasets import load_sample_images

    b = load_backbone("efficientnet_lite0")
    assert b.weights.startswith("package:efficientnet-lite0")
    photos = load_sample_images().images  # china.jpg (a palace), flower.jpg (a daisy)
    x = torch.from_numpy(np.stack([b.preprocess.to_array(Image.fromarray(p)) for p in photos]))
    with torch.inference_mode():
        logits = b.module.net(x)  # the full network, with its ImageNet classifier
    assert logits.argmax(1).tolist() == [698, 985]  # ImageNet 'palace', 'daisy'
