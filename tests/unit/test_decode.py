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
