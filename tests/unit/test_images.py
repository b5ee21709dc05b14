import io

import numpy as np
import pytest
from PIL import Image

from varipipe.errors import BadInputError
from varipipe.pipelines.images import decode_image


def _png(w=10, h=8):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_decodes_rgb():
    arr = decode_image(_png())
    assert arr.shape == (8, 10, 3) and arr.dtype == np.uint8 and tuple(arr[0, 0]) == (10, 20, 30)


@pytest.mark.parametrize("data,status,words", [
    (b"", 400, "empty body"),
    (b"hello, not an image", 400, "not an image"),
])
def test_bad_bytes(data, status, words):
    with pytest.raises(BadInputError) as e:
        decode_image(data)
    assert e.value.status == status and words in str(e.value)


def test_truncated():
    data = _png(64, 64)
    with pytest.raises(BadInputError, match="truncated or corrupt|not an image"):
        decode_image(data[: len(data) // 2])


def test_limits():
    with pytest.raises(BadInputError) as e:
        decode_image(_png(), max_bytes=10)
    assert e.value.status == 413
    with pytest.raises(BadInputError) as e:
        decode_image(_png(100, 100), max_pixels=100)
    assert e.value.status == 413 and "pixels" in str(e.value)
