"""The PyTorch darknet network: cfg parsing, weights loading, layer semantics (synthetic nets, no files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from varipipe.pipelines.variants import _darknet as dn

TINY_CFG = """
[net]
# comment
width=8
height=8
channels=3

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
size=1
stride=1
pad=1
filters=14
activation=linear

[yolo]
mask = 0,1
anchors = 2,3, 4,5, 6,7
classes=2
num=3

[route]
layers = -3

[upsample]
stride=2

[route]
layers = -1, 0

[convolutional]
size=1
stride=1
pad=1
filters=7
activation=linear

[yolo]
mask = 2
anchors = 2,3, 4,5, 6,7
classes=2
num=3
"""


def _weights_file(path, net: dn.Darknet, rng: np.random.Generator, major=0, minor=2, extra=0) -> list[np.ndarray]:
    """A .weights file for ``net`` with random values; returns each conv's arrays in file order."""
    header = np.array([major, minor, 0], np.int32).tobytes()
    header += np.array([123], np.int64 if major * 10 + minor >= 2 else np.int32).tobytes()
    arrays = []
    for layer in net.layers:
        if isinstance(layer, dn._Conv):
            n, w = layer.conv.out_channels, layer.conv.weight.numel()
            parts = [rng.normal(size=n)]
            if layer.batch_normalize:
                parts += [rng.uniform(0.5, 1.5, n), rng.normal(size=n), rng.uniform(0.5, 2.0, n)]
            parts.append(rng.normal(size=w) * 0.1)
            arrays.append(parts)
    flat = np.concatenate([p for parts in arrays for p in parts] + [np.zeros(extra)]).astype(np.float32)
    path.write_bytes(header + flat.tobytes())
    return arrays


def test_cfg_sections_options_and_comments():
    sections = dn.parse_cfg(TINY_CFG)
    assert [s.kind for s in sections][:4] == ["net", "convolutional", "maxpool", "convolutional"]
    assert sections[0].int("width", 0) == 8
    assert sections[4].ints("anchors") == [2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("text", ["width=8\n[net]", "[convolutional]\nsize=1", "[net]\nwidth 8", "[net\n"])
def test_malformed_cfg_is_rejected(text):
    with pytest.raises(ValueError, match="darknet cfg"):
        dn.parse_cfg(text)


def test_unsupported_section_names_itself():
    with pytest.raises(ValueError, match=r"\[crnn\]"):
        dn.Darknet(dn.parse_cfg("[net]\nwidth=8\n[crnn]\n"))


def test_shapes_routes_and_rows():
    net = dn.Darknet(dn.parse_cfg(TINY_CFG)).eval()
    x = torch.rand(2, 3, 8, 8)
    heads = net.heads(x)
    assert [tuple(h.shape) for h in heads] == [(2, 14, 4, 4), (2, 7, 8, 8)]
    assert tuple(net(x).shape) == (2, 4 * 4 * 2 + 8 * 8 * 1, 5 + 2)


def test_weights_load_with_batch_norm_folded_as_darknet_normalises(tmp_path):
    net = dn.Darknet(dn.parse_cfg(TINY_CFG)).eval()
    arrays = _weights_file(tmp_path / "w", net, np.random.default_rng(0))
    net.load_weights(tmp_path / "w")
    bias, scale, mean, var, w = arrays[0]
    x = torch.rand(1, 3, 8, 8)
    conv = torch.nn.functional.conv2d(x, torch.tensor(w, dtype=torch.float32).view(4, 3, 3, 3), padding=1)
    t = lambda a: torch.tensor(a, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
    expected = t(scale) * (conv - t(mean)) / (torch.sqrt(t(var)) + dn.BN_EPSILON) + t(bias)
    got = net.layers[0].conv(x)  # conv with the folded weights, before the activation
    assert torch.allclose(got, expected, atol=1e-5)


def test_weights_of_old_versions_have_a_32_bit_seen_counter(tmp_path):
    net = dn.Darknet(dn.parse_cfg(TINY_CFG)).eval()
    arrays = _weights_file(tmp_path / "w", net, np.random.default_rng(1), major=0, minor=1)
    net.load_weights(tmp_path / "w")
    last_bias = arrays[-1][0]
    assert np.allclose(net.layers[-2].conv.bias.detach().numpy(), last_bias, atol=1e-6)


def test_weights_that_do_not_fit_the_cfg_are_refused(tmp_path):
    net = dn.Darknet(dn.parse_cfg(TINY_CFG)).eval()
    _weights_file(tmp_path / "w", net, np.random.default_rng(2), extra=5)
    with pytest.raises(ValueError, match="5 floats left over"):
        net.load_weights(tmp_path / "w")
    data = (tmp_path / "w").read_bytes()
    (tmp_path / "short").write_bytes(data[: len(data) // 8 * 4])
    with pytest.raises(ValueError, match="ends inside a layer"):
        net.load_weights(tmp_path / "short")
    (tmp_path / "odd").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="not whole float32"):
        net.load_weights(tmp_path / "odd")


def test_maxpool_stride_1_keeps_the_size_and_pads_after():
    pool = dn._MaxPool(dn.Section("maxpool", {"size": "2", "stride": "1"}))
    x = torch.tensor([[[[1.0, 5.0], [3.0, -2.0]]]])
    # darknet: padding size-1 = 1, offset -pad/2 = 0, so the padding (-inf) goes right and below
    assert pool(x).tolist() == [[[[5.0, 5.0], [3.0, -2.0]]]]


def test_maxpool_stride_2_halves_odd_sizes_upwards():
    pool = dn._MaxPool(dn.Section("maxpool", {"size": "2", "stride": "2"}))
    assert tuple(pool(torch.zeros(1, 1, 13, 13)).shape) == (1, 1, 7, 7)  # darknet: (13 + 1 - 2) / 2 + 1


def test_yolo_rows_follow_darknets_box_formula():
    head = dn.YoloHead(dn.Section("yolo", {"mask": "1", "anchors": "10,20, 30,40", "classes": "1"}))
    raw = torch.zeros(1, 6, 2, 2)  # one anchor, 5 + 1 channels, 2 x 2 grid
    raw[0, :, 1, 0] = torch.tensor([0.0, 2.0, math.log(2.0), 0.0, 1.0, -1.0])  # cell row 1, column 0
    rows = head(raw, (64, 64))
    row = rows[0, 1 * 2 + 0]  # rows run by cell row, then column, then anchor
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert row[0].item() == pytest.approx((0 + 0.5) / 2 * 64)
    assert row[1].item() == pytest.approx((1 + sig(2.0)) / 2 * 64)
    assert row[2].item() == pytest.approx(2 * 30)  # exp(tw) x anchor, pixels of the actual input
    assert row[3].item() == pytest.approx(40)
    assert row[4].item() == pytest.approx(sig(1.0)) and row[5].item() == pytest.approx(sig(-1.0))


def test_yolo_scale_x_y_stretches_the_centre_offset_around_the_cell_middle():
    """YOLOv4's grid sensitivity: x = sigmoid(t) * s - (s - 1) / 2 (yolo_layer.c), so t = 0 stays
    in the cell's middle and t -> +inf reaches past the cell's edge by (s - 1) / 2."""
    sec = {"mask": "0", "anchors": "10,20", "classes": "1", "scale_x_y": "1.2"}
    head = dn.YoloHead(dn.Section("yolo", sec))
    raw = torch.zeros(1, 6, 1, 2)
    raw[0, 0, 0, 1] = 50.0  # column 1: sigmoid(tx) = 1
    rows = head(raw, (32, 64))
    assert rows[0, 0, 0].item() == pytest.approx((0 + 0.5) / 2 * 64)  # sigmoid(0) * 1.2 - 0.1 = 0.5
    assert rows[0, 1, 0].item() == pytest.approx((1 + 1.2 - 0.1) / 2 * 64)


def test_route_groups_take_the_group_id_th_channel_slice_of_each_layer():
    sections = dn.parse_cfg("[net]\nwidth=4\nheight=4\nchannels=4\n"
                            "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n"
                            "[route]\nlayers=-1,-2\n")
    with pytest.raises(ValueError, match="no \\[yolo\\] layer"):
        dn.Darknet(sections)  # a network without heads is refused, but its layers build:
    route = dn._Route(sections[1], [-1], [4])
    x = torch.arange(4.0).view(1, 4, 1, 1)
    assert route([x]).flatten().tolist() == [2.0, 3.0] and route.out_channels == 2
    with pytest.raises(ValueError, match="not divisible"):
        dn._Route(sections[1], [-1], [3])


@pytest.mark.parametrize("kind,option", [("convolutional", "groups"), ("yolo", "new_coords"),
                                         ("maxpool", "stride_x")])
def test_options_that_change_inference_and_are_not_implemented_are_refused(kind, option):
    cfg = TINY_CFG.replace(f"[{kind}]\n", f"[{kind}]\n{option}=2\n", 1)
    with pytest.raises(ValueError, match=option):
        dn.Darknet(dn.parse_cfg(cfg))


def test_a_saved_float16_state_loads_back_as_the_float16_rounded_network(tmp_path):
    net = dn.Darknet(dn.parse_cfg(TINY_CFG)).eval()
    _weights_file(tmp_path / "w.weights", net, np.random.default_rng(3))
    (tmp_path / "n.cfg").write_text(TINY_CFG)
    net = dn.load_darknet(tmp_path / "n.cfg", tmp_path / "w.weights")
    dn.save_state(net, tmp_path / f"w{dn.STATE_SUFFIX}", torch.float16)
    back = dn.load_darknet(tmp_path / "n.cfg", tmp_path / f"w{dn.STATE_SUFFIX}")
    for (k, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert b.dtype == torch.float32 and torch.equal(b, a.half().float()), k
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(net.half()(x.half()), back.half()(x.half()))  # on a GPU: the very same network


def test_random_weights_are_seeded_and_start_the_heads_at_the_prior(tmp_path):
    (tmp_path / "n.cfg").write_text(TINY_CFG)
    a, b = dn.random_darknet(tmp_path / "n.cfg", seed=0), dn.random_darknet(tmp_path / "n.cfg", seed=0)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), k
    for head in a.head_indices:
        bias = a.layers[a.sources[head][0]].conv.bias.view(a.layers[head].num_anchors, -1)
        assert torch.allclose(torch.sigmoid(bias[:, 4:]), torch.tensor(dn.PRIOR_PROBABILITY))
        assert not torch.all(bias[:, :4] == bias[0, 0])  # box terms keep torch's initialisation
    with torch.no_grad():
        rows = a(torch.rand(2, 3, 8, 8))
    # objectness x class probability: far below the detector's 0.25 threshold, as in a trained network
    assert float((rows[..., 4:5] * rows[..., 5:]).max()) < 0.05
