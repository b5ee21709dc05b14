"""A darknet network in PyTorch, built from its ``.cfg`` and loaded from its ``.weights``.

Written from darknet's own definitions (parser.c, convolutional_layer.c,
maxpool_layer.c, yolo_layer.c, pjreddie/darknet), independently of OpenCV's
importer, so that it can check OpenCV's outputs on the same weights and serve
as the detector's GPU path. Supported sections: ``[net]``, ``[convolutional]``,
``[maxpool]``, ``[route]`` (with ``groups``/``group_id``), ``[shortcut]``,
``[upsample]``, ``[yolo]`` (with ``scale_x_y``): enough for YOLOv3, YOLOv3-tiny
and YOLOv4-tiny (AlexeyAB/darknet's route_layer.c and yolo_layer.c for the two
options YOLOv4 added). Options that change inference and are not implemented
(``new_coords``, ``stride_x``...) are refused, not ignored.

The network maps a batch of square RGB images in [0, 1] (NCHW) to YOLO rows
``[B, N, 5 + C]``: box centre x, y and width, height in input pixels,
objectness, then C class probabilities (not multiplied by objectness). Rows are
ordered head by head, then cell row, cell column and anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["Section", "parse_cfg", "Darknet", "YoloHead", "load_darknet", "random_darknet", "save_state",
           "STATE_SUFFIX", "PRIOR_PROBABILITY"]

# Darknet's leaky activation (activations.h, leaky_activate: x > 0 ? x : .1 * x).
LEAKY_SLOPE = 0.1
# Darknet's batch norm divides by sqrt(variance) + .000001f (blas.c, normalize_cpu).
BN_EPSILON = 1e-6
# Header of a .weights file: major, minor, revision (int32), then "seen", an int64 from
# version 0.2 on and an int32 before (parser.c, load_weights_upto).
_HEADER_INTS = 3
_SEEN_INT64_FROM = 2  # major * 10 + minor
# Random weights (timing only): the heads' objectness and class biases start at this probability,
# RetinaNet's prior initialisation (Lin et al. 2017, Focal Loss for Dense Object Detection, section
# 4.1: b = -log((1 - pi) / pi), pi = .01). With torch's default initialisation alone every row
# scores about 0.5 x 0.5 = 0.25, the detection threshold, and 1000 candidates reach NMS on every
# image; trained networks pass a handful (0-6 on the bundled photos).
PRIOR_PROBABILITY = 0.01


# Options that change what a supported section computes but are not implemented: refused rather
# than silently ignored (the rest -- training options such as jitter, ignore_thresh -- do not matter).
_UNSUPPORTED_OPTIONS = {
    "convolutional": ("groups", "dilation", "stride_x", "stride_y", "binary", "xnor", "antialiasing"),
    "maxpool": ("stride_x", "stride_y", "maxpool_depth", "antialiasing"),
    "shortcut": ("weights_type",),
    "upsample": ("scale",),
    "yolo": ("new_coords",),
}


@dataclass(frozen=True)
class Section:
    """One ``[kind]`` block of a darknet cfg with its ``key=value`` options (as text)."""

    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def int(self, key: str, default: int) -> int:
        return int(self.options.get(key, default))

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


def parse_cfg(text: str) -> list[Section]:
    """The sections of a darknet cfg, in order; comments (#, ;) and blank lines dropped."""
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"darknet cfg: unterminated section header {raw!r}")
            sections.append(Section(line[1:-1].strip()))
        elif "=" in line and sections:
            key, _, value = line.partition("=")
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ValueError(f"darknet cfg: line outside a section or without '=': {raw!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise ValueError("darknet cfg: the first section must be [net]")
    return sections


class _Conv(nn.Module):
    """[convolutional]: conv (+ batch norm folded into it at load) + activation."""

    def __init__(self, sec: Section, channels: int) -> None:
        super().__init__()
        size, filters = sec.int("size", 1), sec.int("filters", 1)
        pad = size // 2 if sec.int("pad", 0) else sec.int("padding", 0)
        self.batch_normalize = bool(sec.int("batch_normalize", 0))
        self.activation = sec.options.get("activation", "logistic")
        if self.activation not in ("leaky", "linear"):
            raise ValueError(f"darknet cfg: activation {self.activation!r} is not supported (leaky, linear)")
        self.conv = nn.Conv2d(channels, filters, size, sec.int("stride", 1), pad, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return nn.functional.leaky_relu(x, LEAKY_SLOPE) if self.activation == "leaky" else x

    def load(self, floats: np.ndarray, at: int) -> int:
        """Read this layer's parameters from the flat weights array at ``at``; returns the next offset."""
        n = self.conv.out_channels
        biases, at = floats[at:at + n], at + n
        if self.batch_normalize:
            scales, mean, var = (floats[at + i * n:at + (i + 1) * n] for i in range(3))
            at += 3 * n
        count = self.conv.weight.numel()
        if at + count > len(floats):
            raise ValueError(f"darknet weights: file ends inside a layer ({len(floats)} floats, need {at + count})")
        weight = torch.from_numpy(floats[at:at + count].copy()).view_as(self.conv.weight)
        bias = torch.from_numpy(biases.copy())
        if self.batch_normalize:  # y = scale * (conv(x) - mean) / (sqrt(var) + eps) + bias
            k = torch.from_numpy(scales / (np.sqrt(var) + BN_EPSILON))
            weight = weight * k.view(-1, 1, 1, 1)
            bias = bias - torch.from_numpy(mean.copy()) * k
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            self.conv.bias.copy_(bias)
        return at + count


class _MaxPool(nn.Module):
    """[maxpool]: darknet pads ``size - 1`` in total, ``pad // 2`` before and the rest after."""

    def __init__(self, sec: Section) -> None:
        super().__init__()
        self.size, self.stride = sec.int("size", sec.int("stride", 1)), sec.int("stride", 1)
        self.padding = sec.int("padding", self.size - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before = self.padding // 2
        after = self.padding - before
        x = nn.functional.pad(x, (before, after, before, after), value=float("-inf"))
        return nn.functional.max_pool2d(x, self.size, self.stride)


class _Route(nn.Module):
    """[route]: the listed layers' outputs concatenated on channels; with ``groups`` = g, only
    the ``group_id``-th of g equal channel slices of each (route_layer.c, forward_route_layer)."""

    def __init__(self, sec: Section, sources: list[int], channels: list[int]) -> None:
        super().__init__()
        self.groups, self.group_id = sec.int("groups", 1), sec.int("group_id", 0)
        if self.groups < 1 or not 0 <= self.group_id < self.groups:
            raise ValueError(f"darknet cfg: [route] groups={self.groups} group_id={self.group_id} is not a valid slice")
        for s in sources:
            if channels[s + 1] % self.groups:
                raise ValueError(f"darknet cfg: [route] layer {s} has {channels[s + 1]} channels, "
                                 f"not divisible into {self.groups} groups")
        self.out_channels = sum(channels[s + 1] // self.groups for s in sources)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.groups > 1:
            inputs = [x.chunk(self.groups, dim=1)[self.group_id] for x in inputs]
        return torch.cat(inputs, dim=1) if len(inputs) > 1 else inputs[0]


class _Upsample(nn.Module):
    def __init__(self, sec: Section) -> None:
        super().__init__()
        self.stride = sec.int("stride", 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=self.stride, mode="nearest")


class YoloHead(nn.Module):
    """[yolo]: the raw head output -> rows of box, objectness and class probabilities.

    Box centre: (cell + sigmoid(t) x scale_x_y - (scale_x_y - 1) / 2) / grid x input side
    (scale_x_y = 1 before YOLOv4); size: anchor x exp(t), the
    anchors in pixels of the actual input, whatever its size (yolo_layer.c,
    get_yolo_box: ``w = exp(tw) * anchor / net.w`` as a fraction of the input).
    """

    def __init__(self, sec: Section) -> None:
        super().__init__()
        anchors = sec.ints("anchors")
        mask = sec.ints("mask") if "mask" in sec.options else list(range(len(anchors) // 2))
        pairs = [(anchors[2 * m], anchors[2 * m + 1]) for m in mask]
        self.classes = sec.int("classes", 80)
        self.num_anchors = len(pairs)
        # YOLOv4's grid sensitivity: x = sigmoid(t) * s - (s - 1) / 2, so a centre can reach the
        # cell's edges (yolo_layer.c, forward_yolo_layer: scal_add_cpu(..., scale_x_y, -0.5 * (scale_x_y - 1)))
        self.scale_x_y = float(sec.options.get("scale_x_y", 1.0))
        self.register_buffer("anchors", torch.tensor(pairs, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
        b, _, h, w = x.shape
        a, c = self.num_anchors, 5 + self.classes
        # [B, A*(5+C), H, W] -> [B, H, W, A, 5+C]
        p = x.view(b, a, c, h, w).permute(0, 3, 4, 1, 2).float()
        ys = torch.arange(h, device=x.device, dtype=p.dtype).view(1, h, 1, 1)
        xs = torch.arange(w, device=x.device, dtype=p.dtype).view(1, 1, w, 1)
        in_h, in_w = input_size
        s, shift = self.scale_x_y, (self.scale_x_y - 1) / 2
        cx = (xs + torch.sigmoid(p[..., 0]) * s - shift) / w * in_w
        cy = (ys + torch.sigmoid(p[..., 1]) * s - shift) / h * in_h
        bw = torch.exp(p[..., 2]) * self.anchors[:, 0]
        bh = torch.exp(p[..., 3]) * self.anchors[:, 1]
        rest = torch.sigmoid(p[..., 4:])
        rows = torch.cat([torch.stack([cx, cy, bw, bh], dim=-1), rest], dim=-1)
        return rows.reshape(b, h * w * a, c)


class Darknet(nn.Module):
    """The network of a darknet cfg; ``forward`` gives YOLO rows, ``heads`` the raw head tensors."""

    def __init__(self, sections: Sequence[Section]) -> None:
        super().__init__()
        net = sections[0]
        self.trained_size = (net.int("width", 416), net.int("height", 416))
        self.layers = nn.ModuleList()
        self.kinds: list[str] = []
        self.sources: list[list[int]] = []  # absolute indices of the earlier outputs a layer reads
        channels = [net.int("channels", 3)]  # channels[i + 1]: output channels of layer i
        for i, sec in enumerate(sections[1:]):
            layer, srcs, out = self._layer(sec, i, channels)
            self.layers.append(layer)
            self.kinds.append(sec.kind)
            self.sources.append(srcs)
            channels.append(out)
        self.head_indices = [i for i, k in enumerate(self.kinds) if k == "yolo"]
        if not self.head_indices:
            raise ValueError("darknet cfg: no [yolo] layer, so no detections")
        self.classes = {self.layers[i].classes for i in self.head_indices}.pop()

    def _layer(self, sec: Section, i: int, channels: list[int]) -> tuple[nn.Module, list[int], int]:
        prev = channels[-1]
        refused = [k for k in _UNSUPPORTED_OPTIONS.get(sec.kind, ()) if k in sec.options]
        if refused:
            raise ValueError(f"darknet cfg: [{sec.kind}] option(s) {refused} are not implemented here")
        if sec.kind == "convolutional":
            return _Conv(sec, prev), [i - 1], sec.int("filters", 1)
        if sec.kind == "maxpool":
            return _MaxPool(sec), [i - 1], prev
        if sec.kind == "upsample":
            return _Upsample(sec), [i - 1], prev
        if sec.kind == "route":
            srcs = [s if s >= 0 else i + s for s in sec.ints("layers")]
            route = _Route(sec, srcs, channels)
            return route, srcs, route.out_channels
        if sec.kind == "shortcut":
            src = sec.int("from", -1)
            if sec.options.get("activation", "linear") != "linear":
                raise ValueError("darknet cfg: only linear [shortcut] is supported")
            return nn.Identity(), [i - 1, src if src >= 0 else i + src], prev
        if sec.kind == "yolo":
            return YoloHead(sec), [i - 1], prev
        raise ValueError(f"darknet cfg: section [{sec.kind}] is not supported")

    def _run(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(raw head inputs, decoded rows per head)."""
        size = (x.shape[2], x.shape[3])
        outputs: list[torch.Tensor] = []
        raw, rows = [], []
        for layer, kind, srcs in zip(self.layers, self.kinds, self.sources, strict=True):
            inp = outputs[srcs[0]] if srcs[0] >= 0 else x
            if kind == "route":
                y = layer([outputs[s] for s in srcs])
            elif kind == "shortcut":
                y = inp + outputs[srcs[1]]
            elif kind == "yolo":
                raw.append(inp)
                y = layer(inp, size)
                rows.append(y)
            else:
                y = layer(inp)
            outputs.append(y)
        return raw, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._run(x)[1], dim=1)

    def heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The raw outputs of the convolutions that feed the [yolo] layers, in cfg order."""
        return self._run(x)[0]

    def load_weights(self, path: Path) -> None:
        """Load a darknet ``.weights`` file; every float of it must be used."""
        data = path.read_bytes()
        major, minor, _revision = np.frombuffer(data, np.int32, _HEADER_INTS)
        seen_bytes = 8 if major * 10 + minor >= _SEEN_INT64_FROM else 4
        offset = _HEADER_INTS * 4 + seen_bytes
        if (len(data) - offset) % 4:
            raise ValueError(f"darknet weights {path.name}: {len(data) - offset} bytes after the header "
                             "are not whole float32 values")
        floats = np.frombuffer(data, np.float32, offset=offset)
        at = 0
        for layer in self.layers:
            if isinstance(layer, _Conv):
                at = layer.load(floats, at)
        if at != len(floats):
            raise ValueError(f"darknet weights {path.name}: {len(floats) - at} floats left over; "
                             "the cfg does not match the weights")


# A state dict written by ``save_state`` (batch norm already folded) instead of darknet's .weights.
STATE_SUFFIX = ".pt"


def save_state(net: Darknet, path: Path, dtype: torch.dtype) -> None:
    """Write the network's parameters (batch norm folded into the convolutions) as a torch state dict
    in ``dtype``: in float16, exactly the values the GPU path computes with, in half the bytes."""
    torch.save({k: v.to(dtype) for k, v in net.state_dict().items()}, path)


def load_darknet(cfg: Path, weights: Path) -> Darknet:
    """The network of ``cfg`` with ``weights`` loaded (darknet's .weights, or a ``save_state`` file
    ending in ``STATE_SUFFIX``), in eval mode (float32, CPU)."""
    net = Darknet(parse_cfg(cfg.read_text(encoding="utf-8")))
    if weights.suffix == STATE_SUFFIX:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    else:
        net.load_weights(weights)
    return net.eval()


def random_darknet(cfg: Path, seed: int) -> Darknet:
    """The network of ``cfg`` with seeded random weights (torch's initialisation; the [yolo] heads'
    objectness and class biases at ``PRIOR_PROBABILITY``), in eval mode: for timing where the weights
    cannot travel; its detections mean nothing."""
    torch.manual_seed(seed)
    net = Darknet(parse_cfg(cfg.read_text(encoding="utf-8")))
    prior = -float(np.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))
    for head in net.head_indices:
        conv = net.layers[net.sources[head][0]]
        if not isinstance(conv, _Conv):
            raise ValueError(f"darknet cfg: [yolo] layer {head} does not follow a [convolutional] layer")
        yolo = net.layers[head]
        with torch.no_grad():  # per anchor: x, y, w, h, objectness, classes
            conv.conv.bias.view(yolo.num_anchors, 5 + yolo.classes)[:, 4:] = prior
    return net.eval()
