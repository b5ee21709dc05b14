"""Decode untrusted image bytes safely: size limits before and after decoding.

Used by the HTTP ingress and by ``varipipe run``, before any stage sees the
image; every failure is a ``BadInputError`` with the HTTP status to answer
(400 bad data, 413 too big, 422 a shape no stage can use: see ``check_shape``).
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from varipipe.errors import BadInputError

__all__ = ["MAX_BYTES", "MAX_PIXELS", "MIN_SIDE", "MAX_ASPECT", "SHAPE_STATUS", "check_shape", "decode_image"]

# 20 MiB of encoded bytes: a 24-megapixel JPEG at high quality stays under it.
MAX_BYTES = 20 * 1024 * 1024
# 40 megapixels decoded (about 120 MB as RGB uint8): bounds memory per request and
# stops decompression bombs, which Pillow's own guard only warns about below 2x its limit.
MAX_PIXELS = 40_000_000
# The shape rule of every image pipeline. Images outside it decode fine but no stage
# can see anything in them, so they are refused before any stage runs.
# 8 px: the smallest region a stage looks at (the classifier skips boxes under 8 px,
# classifier.MIN_CROP_SIDE; PP-OCR's detector drops text regions under 3 + 2 px).
MIN_SIDE = 8
# 20:1: the detector's smallest input (320 px) then still leaves the short side 16 px,
# one cell of YOLOv3-tiny's finer grid (stride 16); thinner strips hold nothing it can
# detect. Wide enough for panoramas (about 4-12:1) and till receipts (80 mm x 1 m, 12.5:1).
MAX_ASPECT = 20
# 422: the image is well formed, its shape is what cannot be processed (RFC 9110 15.5.21).
SHAPE_STATUS = 422


def check_shape(width: int, height: int, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> None:
    """``BadInputError`` (422) unless both sides are at least ``min_side`` and the long side is
    at most ``max_aspect`` times the short one."""
    rule = f"accepted: both sides >= {min_side} px, aspect ratio up to {max_aspect}:1"
    if min(width, height) < min_side:
        raise BadInputError(f"image of {width}x{height} is too small: both sides must be at least {min_side} px "
                            f"({rule})", status=SHAPE_STATUS)
    if max(width, height) > max_aspect * min(width, height):
        raise BadInputError(f"image of {width}x{height} is too thin: its aspect ratio "
                            f"{max(width, height) / min(width, height):.1f}:1 exceeds the limit of {max_aspect}:1 "
                            f"({rule})", status=SHAPE_STATUS)


def decode_image(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE,
                 max_aspect: float = MAX_ASPECT) -> np.ndarray:
    """Bytes of a PNG/JPEG/... -> HxWx3 uint8 RGB array of a shape ``check_shape`` accepts, or
    ``BadInputError``."""
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
            if w >= 1 and h >= 1:  # a zero side is refused below, as "no pixels", after decoding
                check_shape(w, h, min_side, max_aspect)  # before decoding: a refused shape costs no pixel decoding
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
