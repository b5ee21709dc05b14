"""Decode untrusted image bytes safely: size limits before and after decoding.

Used by the HTTP ingress and by ``varipipe run``; every failure is a
``BadInputError`` with the HTTP status to answer (400 bad data, 413 too big).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from varipipe.errors import BadInputError

__all__ = ["MAX_BYTES", "MAX_PIXELS", "decode_image"]

# 20 MiB of encoded bytes: a 24-megapixel JPEG at high quality stays under it.
MAX_BYTES = 20 * 1024 * 1024
# 40 megapixels decoded (about 120 MB as RGB uint8): bounds memory per request and
# stops decompression bombs, which Pillow's own guard only warns about below 2x its limit.
MAX_PIXELS = 40_000_000


def decode_image(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes of a PNG/JPEG/... -> HxWx3 uint8 RGB array, or ``BadInputError``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInputError("empty body: send the image bytes (raw, multipart field 'image', or JSON base64)")
    if len(data) > max_bytes:
        raise BadInputError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes} bytes", status=413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise BadInputError(f"image of {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} pixels",
                                    status=413)
            img.load()
    except BadInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInputError(f"image rejected as a decompression bomb: {e}", status=413) from e
    except UnidentifiedImageError as e:
        raise BadInputError("body is not an image in a format Pillow can read (PNG, JPEG, BMP, ...)") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"image is truncated or corrupt: {e}") from e
    if w < 1 or h < 1:
        raise BadInputError(f"image has no pixels ({w}x{h})")
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))
