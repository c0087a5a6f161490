"""Image bytes (or Spark's image struct) -> PIL image, with every failure mapped to a counted reject reason.
No Spark imports."""
from __future__ import annotations

import io
import warnings
from typing import Any, Mapping

from PIL import Image, UnidentifiedImageError

EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
CORRUPT_IMAGE = "corrupt_image"
TOO_LARGE = "too_large"
NOT_IN_CLASS_FOLDER = "not_in_class_folder"
SYMLINK_LOOP = "symlink_loop"  # a symlink to a directory already read (ingest reads every directory once)

REJECT_REASONS = (EMPTY_FILE, NOT_AN_IMAGE, CORRUPT_IMAGE, TOO_LARGE, NOT_IN_CLASS_FOLDER, SYMLINK_LOOP)


class ImageDecodeError(Exception):
    """Why bytes are not a usable image; ``reason`` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def open_image(data: bytes | bytearray | memoryview | None, draft_size: int | None = None) -> Image.Image:
    """Fully decode ``data`` and return the PIL image (pixel data loaded).

    ``draft_size`` lets JPEG decode at a reduced scale whose shorter side is still >= draft_size (much faster for
    large photos; the result is what every later step sees, so features stay reproducible).
    """
    if data is None or len(data) == 0:
        raise ImageDecodeError(EMPTY_FILE, "the file has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
    except UnidentifiedImageError:
        raise ImageDecodeError(NOT_AN_IMAGE, "not an image format Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(TOO_LARGE, str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageDecodeError(CORRUPT_IMAGE, f"{type(exc).__name__}: {exc}") from None
    if img.width < 1 or img.height < 1:
        raise ImageDecodeError(CORRUPT_IMAGE, f"image has size {img.width}x{img.height}")
    return img


# Spark's image source (``spark.read.format("image")``): OpenCV type -> (channels, Pillow raw mode of ``data``)
OPENCV_MODES = {0: (1, "L"), 16: (3, "BGR"), 24: (4, "BGRA")}  # CV_8UC1 gray, CV_8UC3 BGR, CV_8UC4 BGRA
_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _check_pixels(width: int, height: int) -> None:
    """Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``, read now): what ``open_image`` refuses."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > 2 * limit:
        raise ImageDecodeError(
            TOO_LARGE, f"image size ({width * height} pixels) exceeds the limit of {2 * limit} pixels (PIL.Image.MAX_IMAGE_PIXELS x 2)"
        )


def image_from_struct(row: Mapping[str, Any] | None) -> Image.Image:
    """One value of Spark's image struct (origin, height, width, nChannels, mode, data; a dict as pyarrow's
    ``as_py()`` gives it) -> an RGB PIL image. ``data`` is row-major, BGR(A) channel order (OpenCV's)."""
    if row is None:
        raise ImageDecodeError(EMPTY_FILE, "the image struct is null")
    height, width, channels, mode, data = (row.get(k) for k in ("height", "width", "nChannels", "mode", "data"))
    if not isinstance(height, int) or not isinstance(width, int) or height < 1 or width < 1 or not data:
        raise ImageDecodeError(
            CORRUPT_IMAGE, f"Spark's image source could not decode {row.get('origin')} (height {height}, width {width}, "
            f"{len(data or b'')} bytes of data)"
        )
    if mode not in OPENCV_MODES:
        raise ImageDecodeError(NOT_AN_IMAGE, f"OpenCV mode {mode} is not supported (only 0 gray, 16 BGR, 24 BGRA, 8 bits)")
    want_channels, raw_mode = OPENCV_MODES[mode]
    if channels != want_channels:
        raise ImageDecodeError(CORRUPT_IMAGE, f"OpenCV mode {mode} has {want_channels} channels but nChannels is {channels}")
    _check_pixels(width, height)
    if len(data) != height * width * channels:
        raise ImageDecodeError(
            CORRUPT_IMAGE, f"data has {len(data)} bytes, not height x width x nChannels = {height}x{width}x{channels}"
        )
    img = Image.frombytes(_PIL_MODES[channels], (width, height), bytes(data), "raw", raw_mode)
    return img.convert("RGB")


def decode_image(value: Any, draft_size: int | None = None) -> Image.Image:
    """Encoded bytes (``open_image``, with its JPEG ``draft_size`` shortcut) or an image struct dict
    (``image_from_struct``; ``draft_size`` does not apply) -> the PIL image."""
    if isinstance(value, Mapping):
        return image_from_struct(value)
    return open_image(value, draft_size=draft_size)


def check_image(data: bytes | bytearray | memoryview | None) -> tuple[str | None, str | None]:
    """(None, None) when ``data`` decodes to an image, else (reason, detail)."""
    try:
        open_image(data)
    except ImageDecodeError as exc:
        return exc.reason, exc.detail
    return None, None
