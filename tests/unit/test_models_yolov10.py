"""YOLOv10-N pieces without the checkpoint: output layout, anchors, key mapping, decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from varipipe.errors import ModelUnavailableError, SpecError
from varipipe.pipelines.variants import _yolov10, yolov10
from varipipe.records import VariantSpec


def test_output_is_boxes_then_class_scores_for_every_anchor_of_three_levels():
    torch.manual_seed(0)
    net = _yolov10.YOLOv10N().eval()
    with torch.no_grad():
        net.head.dfl.weight.copy_(torch.arange(16.0).view(1, 16, 1, 1))  # as every checkpoint has it
        out = net(torch.rand(2, 3, 64, 96))  # not square: 8x12 + 4x6 + 2x3 cells
    assert out.shape == (2, 4 + _yolov10.NUM_CLASSES, 8 * 12 + 4 * 6 + 2 * 3)
    x1, y1, x2, y2 = out[:, :4].unbind(1)
    assert bool((x1 <= x2).all() and (y1 <= y2).all())  # distances from the cell centre are >= 0
    assert bool(((out[:, 4:] > 0) & (out[:, 4:] < 1)).all())


def test_anchor_centres_run_row_major_per_level_with_their_stride():
    feats = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 1)]
    centres, strides = _yolov10._anchor_centres(feats)
    assert centres[0].T.tolist()[:4] == [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5]]
    assert strides.flatten().tolist() == [8.0] * 6 + [16.0] * 2 + [32.0]


@pytest.mark.parametrize(("theirs", "ours"), [
    ("model.0.conv.weight", "stem1.conv.weight"),
    ("model.22.m.0.cv1.2.conv1.bn.running_var", "bu5.m.0.cv1.2.conv1.bn.running_var"),
    ("model.23.one2one_cv2.1.2.bias", "head.box.1.2.bias"),
    ("model.23.one2one_cv3.0.0.1.conv.weight", "head.cls.0.0.1.conv.weight"),
    ("model.23.dfl.conv.weight", "head.dfl.weight"),
    ("model.23.cv2.0.0.conv.weight", None),  # one-to-many branch: not loaded
    ("model.23.cv3.2.2.bias", None),
])
def test_checkpoint_keys_map_onto_ours(theirs, ours):
    assert _yolov10._our_key(theirs) == ours
    if ours is not None:
        assert ours in _yolov10.YOLOv10N().state_dict()


def test_an_unknown_head_tensor_is_an_error():
    with pytest.raises(ModelUnavailableError, match="one2one_cv4"):
        _yolov10._our_key("model.23.one2one_cv4.0.weight")


def test_decoding_keeps_every_class_pair_above_the_threshold_best_first():
    pred = np.zeros((84, 3), np.float32)
    pred[:4] = [[10, 20, 30], [10, 20, 30], [50, 60, 70], [50, 60, 70]]  # x1 y1 x2 y2 per anchor
    pred[4 + 3, 0], pred[4 + 5, 0], pred[4 + 3, 1], pred[4 + 7, 2] = 0.9, 0.3, 0.2, 0.25
    boxes, classes, scores = yolov10.decode_one_to_one(pred, 0.25)
    assert classes.tolist() == [3, 5, 7]
    assert scores.tolist() == pytest.approx([0.9, 0.3, 0.25])
    assert boxes.tolist() == [[10, 10, 50, 50], [10, 10, 50, 50], [30, 30, 70, 70]]


def test_an_input_size_off_the_stride_is_a_spec_error():
    spec = VariantSpec("detector", "v10-300", "onnx", "varipipe.pipelines.variants.yolov10:make", input_size=300)
    with pytest.raises(SpecError, match="multiple of 32"):
        yolov10.make(spec)


def test_rows_for_the_torch_detector_are_centre_size_objectness_scores():
    torch.manual_seed(0)
    net = _yolov10.YOLOv10N().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        raw, rows = net(x), _yolov10.YOLOv10Rows(net)(x)
    assert tuple(rows.shape) == (1, raw.shape[2], 5 + 80)
    x1, y1, x2, y2 = raw[0, :4]
    assert torch.allclose(rows[0, :, 0], (x1 + x2) / 2) and torch.allclose(rows[0, :, 3], y2 - y1)
    assert (rows[0, :, 4] == 1).all() and torch.equal(rows[0, :, 5:], raw[0, 4:].T)


def test_anchor_centres_are_made_on_the_features_device():
    """On CUDA, centres made on the CPU would not add to the boxes; the meta device shows where they go."""
    centres, strides = _yolov10._anchor_centres([torch.empty(1, 8, 4, 4, device="meta")] * 3)
    assert centres.device.type == strides.device.type == "meta"
