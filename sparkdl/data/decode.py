"""Image bytes -> PIL image, with every failure mapped to a counted reject reason. No Spark imports."""
from __future__ import annotations

import io
import warnings

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


def check_image(data: bytes | bytearray | memoryview | None) -> tuple[str | None, str | None]:
    """(None, None) when ``data`` decodes to an image, else (reason, detail)."""
    try:
        open_image(data)
    except ImageDecodeError as exc:
        return exc.reason, exc.detail
    return None, None
