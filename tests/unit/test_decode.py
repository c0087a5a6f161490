import io

import numpy as np
import pytest
from PIL import Image

from datagen import jpeg_bytes
from sparkdl.data import decode


def test_good_jpeg_and_png_decode():
    assert decode.check_image(jpeg_bytes(1)) == (None, None)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8), mode="L").save(buf, format="PNG")
    img = decode.open_image(buf.getvalue())
    assert img.size == (7, 5)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", decode.EMPTY_FILE),
        (None, decode.EMPTY_FILE),
        (b"hello, I am a text file\n", decode.NOT_AN_IMAGE),
        (jpeg_bytes(3, size=(120, 160))[:700], decode.CORRUPT_IMAGE),
    ],
)
def test_bad_bytes_give_a_reason(data, reason):
    got, detail = decode.check_image(data)
    assert got == reason
    assert detail


def test_draft_keeps_shorter_side_at_least_requested():
    big = jpeg_bytes(5, size=(600, 800))
    img = decode.open_image(big, draft_size=256)
    assert min(img.size) >= 256
    assert img.size[0] < 800  # decoded at a reduced scale


def _struct(pixels: np.ndarray, cv_mode: int, **over) -> dict:
    """Spark's image struct (as pyarrow's ``as_py()`` gives it) for an HxWxC uint8 array already in BGR(A) order."""
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    row = {"origin": "file:/x/a.png", "height": h, "width": w, "nChannels": c, "mode": cv_mode, "data": pixels.tobytes()}
    return {**row, **over}


def test_struct_bgr_pixel_becomes_rgb():
    blue_bgr = np.zeros((2, 3, 3), dtype=np.uint8)
    blue_bgr[..., 0] = 255  # B in OpenCV's order
    img = decode.image_from_struct(_struct(blue_bgr, 16))
    assert img.mode == "RGB" and img.size == (3, 2)
    assert img.getpixel((0, 0)) == (0, 0, 255)


def test_struct_gray_and_bgra_match_pillow():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(4, 5), dtype=np.uint8)
    img = decode.image_from_struct(_struct(gray, 0))
    assert np.array_equal(np.asarray(img), np.asarray(Image.fromarray(gray, "L").convert("RGB")))
    rgba = rng.integers(0, 256, size=(4, 5, 4), dtype=np.uint8)
    bgra = rgba[..., [2, 1, 0, 3]].copy()
    img = decode.image_from_struct(_struct(bgra, 24))
    assert np.array_equal(np.asarray(img), rgba[..., :3])  # alpha dropped, as Pillow's RGBA -> RGB does


def test_decode_image_takes_bytes_or_struct():
    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    from_bytes = decode.decode_image(buf.getvalue())
    from_struct = decode.decode_image(_struct(rgb[..., ::-1].copy(), 16))
    assert np.array_equal(np.asarray(from_bytes), np.asarray(from_struct))


@pytest.mark.parametrize(
    "over, reason, match",
    [
        (dict(height=-1, width=-1, nChannels=-1, mode=-1, data=b""), decode.CORRUPT_IMAGE, "could not decode file:/x/a.png"),
        (dict(height=0, width=0, data=b""), decode.CORRUPT_IMAGE, "could not decode"),
        (dict(data=bytes(2 * 3 * 3 - 1)), decode.CORRUPT_IMAGE, "17 bytes, not height x width x nChannels = 2x3x3"),
        (dict(data=bytes(2 * 3 * 3 + 3)), decode.CORRUPT_IMAGE, "21 bytes"),
        (dict(nChannels=4), decode.CORRUPT_IMAGE, "nChannels is 4"),
        (dict(mode=21), decode.NOT_AN_IMAGE, "OpenCV mode 21 is not supported"),
    ],
)
def test_bad_structs_give_a_reason(over, reason, match):
    with pytest.raises(decode.ImageDecodeError, match=match) as exc:
        decode.image_from_struct(_struct(np.zeros((2, 3, 3), dtype=np.uint8), 16, **over))
    assert exc.value.reason == reason and exc.value.reason in decode.REJECT_REASONS


def test_null_struct_and_too_large_struct(monkeypatch):
    with pytest.raises(decode.ImageDecodeError) as exc:
        decode.image_from_struct(None)
    assert exc.value.reason == decode.EMPTY_FILE
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2)  # the same limit open_image applies (2 x MAX_IMAGE_PIXELS)
    with pytest.raises(decode.ImageDecodeError, match="6 pixels") as exc:
        decode.image_from_struct(_struct(np.zeros((2, 3, 3), dtype=np.uint8), 16))
    assert exc.value.reason == decode.TOO_LARGE
    assert decode.image_from_struct(_struct(np.zeros((2, 2), dtype=np.uint8), 0)).size == (2, 2)
