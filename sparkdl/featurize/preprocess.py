"""Decoded image -> normalized float tensor, as each backbone's pretrained weights expect. No Spark imports."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize``, center-crop ``crop`` x ``crop``, then per channel
    ``(pixel * scale - mean) / std`` in ``channel_order``. Output layout is CHW float32."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        if self.crop > self.resize or self.crop < 1:
            raise ValueError(f"crop ({self.crop}) must be in [1, resize ({self.resize})]")
        if self.channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")

    def to_json(self) -> dict:
        return asdict(self)

    def resize_crop(self, img: Image.Image) -> Image.Image:
        img = img.convert("RGB")
        w, h = img.size
        scale = self.resize / min(w, h)
        nw, nh = max(self.crop, round(w * scale)), max(self.crop, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        return img.crop((left, top, left + self.crop, top + self.crop))

    def to_array(self, img: Image.Image) -> np.ndarray:
        """CHW float32 array ready for the backbone."""
        arr = np.asarray(self.resize_crop(img), dtype=np.float32)  # HWC, RGB, 0..255
        if self.channel_order == "BGR":
            arr = arr[:, :, ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        arr = (arr * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


IMAGENET = Preprocess(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# TF EfficientNet-Lite was trained on (pixel - 127) / 128 ~ (x - 0.5) / 0.5.
TF_LITE = Preprocess(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# Keras/Caffe VGG16: BGR, 0..255, ImageNet mean subtracted, no scaling.
CAFFE_BGR = Preprocess(
    resize=256, crop=224, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0), scale=1.0, channel_order="BGR"
)
