"""One local Ray + Serve for the whole integration session, on 127.0.0.1."""

from __future__ import annotations

import io
import sys

import pytest

from varipipe.pipelines.server import serve_session


@pytest.fixture(scope="session")
def serve_port():
    _refuse_gevent_patching()
    with serve_session() as port:
        yield port


def _refuse_gevent_patching() -> None:
    """A test module that imports locust patches this process with gevent, and Ray
    then hangs without a word; say so instead."""
    if "gevent.monkey" in sys.modules and sys.modules["gevent.monkey"].is_module_patched("socket"):
        raise RuntimeError("gevent has monkey-patched this pytest process (a test imported locust?); "
                           "Ray cannot start here: run locust in a subprocess")


@pytest.fixture(scope="session")
def png_bytes():
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 100, 50)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def chelsea_jpeg():
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG", quality=90)
    return buf.getvalue()
