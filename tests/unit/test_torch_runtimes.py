"""The PyTorch (GPU) runtimes run on the CPU here: the same code, device="cpu" (no real weights needed).

The detector's raw outputs against OpenCV's, and the classifier and LLM against their CPU runtimes,
are in test_torch_vs_cpu_runtimes.py (real weights, slow).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from varipipe.errors import ModelUnavailableError, SpecError
from varipipe.pipelines.models import COPY_MANIFEST, model_files
from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants import detector_torch as dt
from varipipe.pipelines.variants._torch_image import area_weights, resize_image
from varipipe.pipelines.variants._torch_runtime import normalise_gpu_name
from varipipe.pipelines.variants.llm_torch import RecordedPrompt, Recording, TorchCaptioner
from varipipe.pipelines.variants.outputs import (
    Caption,
    Classification,
    Classifications,
    Detection,
    Detections,
)
from varipipe.profiler import gpu_inputs
from varipipe.records import Accuracy, AccuracyKind, VariantSpec


@pytest.mark.parametrize("name, label", [
    ("NVIDIA H200", "h200"),
    ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ("Tesla T4", "t4"),
    ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
])
def test_gpu_names_become_hardware_labels(name, label):
    assert normalise_gpu_name(name) == label


# --- detector ----------------------------------------------------------------------------------------


def test_nms_suppresses_overlaps_of_the_same_class_only():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32)
    classes = torch.tensor([0, 0, 1, 0])
    scores = torch.tensor([0.8, 0.9, 0.7, 0.6])
    assert dt.nms(boxes, scores, classes, iou_threshold=0.45).tolist() == [1, 2, 3]


def test_nms_keeps_a_box_suppressed_only_by_a_suppressed_one():
    # 0 beats 1 (IoU 0.68), 1 would beat 2 (IoU 0.68), but 0 and 2 barely overlap: 2 stays.
    boxes = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], dtype=torch.float32)
    kept = dt.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.zeros(3, dtype=torch.long), 0.5)
    assert kept.tolist() == [0, 2]


def test_select_scores_objectness_times_class_and_keeps_the_best():
    rows = torch.zeros(3, 5 + 2)
    rows[0] = torch.tensor([50, 50, 20, 10, 0.9, 0.1, 0.8])  # class 1, score 0.72
    rows[1] = torch.tensor([52, 50, 20, 10, 0.5, 0.9, 0.2])  # class 0, score 0.45
    rows[2] = torch.tensor([10, 10, 4, 4, 0.3, 0.5, 0.5])  # score 0.15: below the threshold
    boxes, classes, scores = dt.select(rows, 0.25, 0.45, max_detections=20)
    assert classes.tolist() == [1, 0]
    assert scores.tolist() == pytest.approx([0.72, 0.45])
    assert boxes[0].tolist() == pytest.approx([40, 45, 60, 55])
    assert len(dt.select(rows, 0.25, 0.45, max_detections=1)[0]) == 1


def test_letterbox_centres_the_image_on_the_pad_value():
    img = torch.full((50, 100, 3), 255, dtype=torch.uint8)
    canvas, geo = dt.letterbox(img, 64, pad_value=0.5)
    assert tuple(canvas.shape) == (3, 64, 64)
    assert (geo.scale, geo.offset_x, geo.offset_y) == (0.64, 0, 16)
    assert canvas[0, 0, 0].item() == 0.5 and canvas[0, 32, 32].item() == 1.0


def test_detections_map_back_to_image_pixels():
    spec = VariantSpec("detector", "d", "torch", "x:y", input_size=64)
    det = dt.TorchDetector(spec)
    det.class_names = ["a", "b"]
    geo = dt.Placement(scale=0.5, offset_x=0, offset_y=8, width=128, height=96)
    rows = torch.tensor([[32.0, 32.0, 16.0, 8.0, 1.0, 0.0, 0.9]])
    (d,) = det._detections([(rows, geo)]).items
    assert d.label == "b" and d.box == pytest.approx((48.0, 40.0, 80.0, 56.0))


def test_multi_label_scores_every_class_of_a_box_that_reaches_the_threshold():
    rows = torch.tensor([[50.0, 50.0, 20.0, 10.0, 1.0, 0.6, 0.3, 0.1]])
    _, classes, scores = dt.candidates(rows, 0.25, multi_label=True)
    pairs = sorted(zip(classes.tolist(), scores.tolist(), strict=True))
    assert pairs == [(0, pytest.approx(0.6)), (1, pytest.approx(0.3))]
    assert dt.candidates(rows, 0.25)[1].tolist() == [0]  # darknet: the best class only


def test_nms_iou_none_keeps_every_box_best_first():
    spec = VariantSpec("detector", "d", "torch", "x:y", input_size=64, params={"nms_iou": None})
    det = dt.TorchDetector(spec)
    det.class_names = ["a"]
    geo = dt.Placement(scale=1.0, offset_x=0, offset_y=0, width=64, height=64)
    rows = torch.tensor([[32.0, 32.0, 16.0, 8.0, 1.0, 0.5], [32.0, 32.0, 16.0, 8.0, 1.0, 0.9]])
    assert [d.score for d in det._detections([(rows, geo)]).items] == pytest.approx([0.9, 0.5])
    det.nms_iou = 0.45
    assert len(det._detections([(rows, geo)]).items) == 1


def test_multiscale_views_are_mapped_back_clipped_and_merged():
    """An object seen in both views keeps its best box; one seen only in the shrunk view is mapped back."""
    spec = VariantSpec("detector", "d", "torch", "x:y", input_size=100, params={"multiscale": True})
    det = dt.TorchDetector(spec)
    det.class_names = ["a", "b"]
    full = dt.Placement(scale=1.0, offset_x=0, offset_y=0, width=100, height=100)
    half = dt.Placement(scale=0.5, offset_x=25, offset_y=25, width=100, height=100)
    rows_full = torch.tensor([[50.0, 50.0, 80.0, 80.0, 1.0, 0.6, 0.0]])
    rows_half = torch.tensor([[50.0, 50.0, 40.0, 40.0, 1.0, 0.9, 0.0],  # the same object, better seen
                              [30.0, 30.0, 20.0, 20.0, 1.0, 0.0, 0.7]])  # class b, reaches past the image
    items = det._detections([(rows_full, full), (rows_half, half)]).items
    assert [(d.label, round(d.score, 2)) for d in items] == [("a", 0.9), ("b", 0.7)]
    assert items[0].box == pytest.approx((10.0, 10.0, 90.0, 90.0))
    assert items[1].box == pytest.approx((0.0, 0.0, 30.0, 30.0))  # (-10, -10, 30, 30) clipped


def test_yolov10_on_device_gpu_is_the_torch_detector_with_its_architecture():
    from varipipe.pipelines.variants import yolov10

    spec = VariantSpec("detector", "yolov10n-320", "onnx", "varipipe.pipelines.variants.yolov10:make",
                       input_size=320, params={"model": "yolov10n"})
    det = build_variant(spec, device="gpu")  # not loaded: no GPU needed
    assert isinstance(det, dt.TorchDetector) and det.arch.name == "yolov10" and det.arch.multi_label
    assert det.model_name() == "yolov10n-pt" and det.size == 320
    with pytest.raises(SpecError, match="multiple of 32"):
        yolov10.make(dataclass_replace(spec, input_size=300), device="gpu")


def test_unknown_detector_architecture_names_the_known_ones():
    with pytest.raises(Exception, match="darknet"):
        dt.TorchDetector(VariantSpec("detector", "d", "torch", "x:y", params={"arch": "detr"}))


def test_area_resampling_matches_opencv_inter_area_when_shrinking():
    import cv2  # opencv-python-headless, a dependency
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (97, 131, 3), dtype=np.uint8)
    for h, w in ((45, 60), (31, 77), (97, 50)):
        ours = resize_image(torch.from_numpy(img), h, w)[0].permute(1, 2, 0).numpy()
        theirs = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        assert np.abs(ours - theirs).max() <= 1  # both round to whole levels
    weights = area_weights(131, 60, "cpu")
    assert torch.allclose(weights.sum(dim=1), torch.ones(60))


def test_devices_a_runtime_does_not_support_are_refused():
    from varipipe.pipelines.variants.detector import YoloDetector

    spec = VariantSpec("detector", "d", "opencv_dnn", "x:y")
    with pytest.raises(SpecError, match="device 'gpu' is not supported by YoloDetector"):
        YoloDetector(spec, device="gpu")
    with pytest.raises(SpecError, match="device 'tpu'"):
        dt.TorchDetector(spec, device="tpu")


@pytest.mark.parametrize("factory, cls", [
    ("varipipe.pipelines.variants.detector:make", "TorchDetector"),
    ("varipipe.pipelines.variants.classifier:make", "TorchClassifier"),
    ("varipipe.pipelines.variants.llm:make", "TorchCaptioner"),
])
def test_device_gpu_in_the_factories_selects_the_torch_runtime(factory, cls):
    spec = VariantSpec("s", "v", "x", factory, params={"model": "mobilenet-v2"})
    assert type(build_variant(spec, device="gpu")).__name__ == cls
    assert type(build_variant(spec, device="cpu")).__name__ != cls


def test_loading_on_a_gpu_without_one_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on this host, also where there is one
    spec = VariantSpec("classifier", "c", "onnx", "x:y", params={"model": "mobilenet-v2", "weights": "random"})
    variant = build_variant(dataclass_replace(spec, factory="varipipe.pipelines.variants.classifier:make"),
                            device="gpu")
    with pytest.raises(ModelUnavailableError, match="no CUDA device"):
        variant.load()


def dataclass_replace(spec, **kw):
    import dataclasses

    return dataclasses.replace(spec, **kw)


# --- classifier ------------------------------------------------------------------------------------------


def test_random_weight_classifier_classifies_every_crop_in_one_call():
    spec = VariantSpec("classifier", "mobilenet-v2", "torch", "varipipe.pipelines.variants.classifier_torch:make",
                       input_size=224, params={"model": "mobilenet-v2", "weights": "random", "max_crops": 2})
    clf = build_variant(spec)
    clf.load()
    img = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    dets = Detections((Detection((10, 10, 60, 90), 0, "person", 0.9), Detection((70, 20, 150, 110), 15, "cat", 0.8),
                       Detection((0, 0, 5, 5), 1, "tiny", 0.95)), (160, 120))
    out = clf.infer([Payload("a", image=img, outputs={"detector": dets}), Payload("b", image=img)])
    assert [len(o.items) for o in out] == [2, 1]  # the 5x5 box is too small to classify
    assert out[0].items[0].box == (10, 10, 60, 90) and out[1].items[0].box is None
    assert all(0 <= c.class_id < 1000 and 0 < c.score <= 1 for o in out for c in o.items)


def test_classifier_weights_must_be_named_ones():
    spec = VariantSpec("classifier", "c", "torch", "x:y", params={"model": "mobilenet-v2", "weights": "mine"})
    with pytest.raises(SpecError, match="weights"):
        build_variant(dataclass_replace(spec, factory="varipipe.pipelines.variants.classifier_torch:make"))


# --- LLM ---------------------------------------------------------------------------------------------------

TINY_ARCHS = {
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128, "max_position_embeddings": 512,
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},
    "gemma3": {"model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
               "num_key_value_heads": 1, "head_dim": 16, "num_hidden_layers": 2, "vocab_size": 128,
               "max_position_embeddings": 512, "sliding_window": 8,
               "layer_types": ["sliding_attention", "full_attention"],
               "pad_token_id": 0, "bos_token_id": 2, "eos_token_id": 1},
}


def _captioner(tmp_path, arch: str, cache: str, prompts: dict[str, tuple[list[int], int]]) -> TorchCaptioner:
    (tmp_path / "arch.json").write_text(json.dumps({"config": TINY_ARCHS[arch]}))
    spec = VariantSpec("llm", "tiny", "torch", "varipipe.pipelines.variants.llm_torch:make",
                       params={"model": "tiny", "prompt_style": "completion", "max_tokens": 24, "cache": cache,
                               "weights": "random", "recording": str(tmp_path / "rec.json"),
                               "arch_config": str(tmp_path / "arch.json")})
    llm = TorchCaptioner(spec)
    texts = {text: llm.prompt(Payload(text=text))[0] for text in prompts}
    rec = Recording("tiny", {texts[t]: RecordedPrompt(tuple(ids), n) for t, (ids, n) in prompts.items()}, "test")
    (tmp_path / "rec.json").write_text(json.dumps(rec.to_json()))
    return llm


@pytest.mark.parametrize("arch", sorted(TINY_ARCHS))
@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_random_weights_generate_the_recorded_token_counts_for_the_whole_batch(tmp_path, arch, cache):
    llm = _captioner(tmp_path, arch, cache, {"a cat": ([1, 5, 6, 7], 3), "two dogs on a sofa": ([1, 9, 8, 7, 6, 5], 5)})
    llm.load()
    out = llm.infer([Payload("x", text="a cat"), Payload("y", text="two dogs on a sofa")])
    assert all(isinstance(c, Caption) for c in out)
    assert [c.tokens for c in out] == [3, 5]
    assert all("5 generated in the batch" in c.text for c in out)  # the batch ran to its longest caption
    (alone,) = llm.infer([Payload("x", text="a cat")])
    assert "3 generated in the batch" in alone.text


def test_a_question_gets_the_qa_prompt_and_at_most_the_answer_budget(tmp_path):
    from varipipe.pipelines.variants._qa_prompt import QA_MAX_TOKENS, build_qa_prompt

    dets = Detections((Detection((1, 1, 9, 9), 15, "cat", 0.9), Detection((2, 2, 8, 8), 15, "cat", 0.8)), (10, 10))
    asked = Payload("q", question="How many cats are in the picture?", outputs={"detector": dets})
    llm = _captioner(tmp_path, "llama", "static", {"a cat": ([1, 5, 6, 7], 9)})
    prompt, labels = llm.prompt(asked)
    assert prompt == build_qa_prompt(asked, "completion") and "cat: 2" in prompt and labels == ["cat"]
    rec = Recording.load(tmp_path / "rec.json")
    rec.prompts[prompt] = RecordedPrompt((1, 8, 9), 12)  # more than an answer may take
    (tmp_path / "rec.json").write_text(json.dumps(rec.to_json()))
    llm.load()
    answer, caption = llm.infer([asked, Payload("c", text="a cat")])
    assert (answer.question, answer.tokens) == (asked.question, QA_MAX_TOKENS) and caption.question is None
    assert "9 generated in the batch" in caption.text  # the batch runs to the caption's 9 tokens


def test_random_weights_refuse_unrecorded_prompts(tmp_path):
    llm = _captioner(tmp_path, "llama", "dynamic", {"a cat": ([1, 5], 2)})
    llm.load()
    with pytest.raises(ValueError, match="not in the recording"):
        llm.infer([Payload("x", text="a dog")])


def test_random_weights_need_a_recording():
    spec = VariantSpec("llm", "t", "torch", "x:y", params={"model": "m", "weights": "random"})
    with pytest.raises(SpecError, match="recording"):
        TorchCaptioner(spec)


def test_the_committed_architectures_build_on_the_meta_device():
    from transformers import AutoModelForCausalLM

    from varipipe.pipelines.variants.llm_torch import arch_config

    counts = {}
    for model in ("smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"):
        with torch.device("meta"):
            net = AutoModelForCausalLM.from_config(arch_config(model))
        counts[model] = sum(p.numel() for p in net.parameters())
    # benchmarks/llm_arch_configs.py --check: the dequantised GGUF models have these counts (Qwen's GGUF has
    # its own output matrix, so 630 M rather than the tied 494 M of Qwen2.5-0.5B)
    assert counts == {"smollm2-135m-instruct-q4_1": 134_515_008, "gemma3-270m-q4_k_m": 268_098_176,
                      "qwen2.5-coder-0.5b-instruct-q4_k_m": 630_167_424}


# --- what travels to a GPU host -----------------------------------------------------------------------------


def test_stage_outputs_and_specs_survive_the_carry_format():
    dets = Detections((Detection((1.5, 2.0, 30.25, 40.0), 15, "cat", 0.75),), (640, 480))
    clfs = Classifications((Classification(281, "tabby", 0.5, (1.5, 2.0, 30.25, 40.0)), Classification(1, "x", 0.1)))
    spec = VariantSpec("llm", "v", "torch", "a.b:c", input_size=None, native_batching=False,
                       accuracy=Accuracy(0.5, AccuracyKind.MEASURED, "here"), params={"model": "m", "n": [1, 2]})
    for obj in (dets, clfs, spec):
        assert gpu_inputs._decode(json.loads(json.dumps(gpu_inputs._encode(obj)))) == obj


def test_a_copied_model_is_found_without_its_package(tmp_path):
    folder = tmp_path / "yolov3-tiny"
    folder.mkdir()
    for name in ("w.weights", "n.cfg", "c.names"):
        (folder / name).write_text("x")
    (folder / COPY_MANIFEST).write_text(json.dumps({"weights": "w.weights", "config": "n.cfg", "labels": "c.names"}))
    files = model_files("yolov3-tiny", tmp_path)
    assert (files.weights, files.config, files.labels) == (folder / "w.weights", folder / "n.cfg", folder / "c.names")
    (folder / "n.cfg").unlink()
    with pytest.raises(ModelUnavailableError, match="incomplete"):
        model_files("yolov3-tiny", tmp_path)


# --- any image shape (pipelines/images.py's rule is enforced at the ingress; these must not care) --------

EXTREME_SHAPES = [(1, 1), (10_000, 1), (1, 10_000), (10_000, 2), (8, 160), (160, 8), (1217, 1), (3, 5)]


def _pattern(width: int, height: int) -> torch.Tensor:
    y, x = np.indices((height, width), dtype=np.uint32)
    base = ((x * 7 + y * 13) % 256).astype(np.uint8)
    return torch.from_numpy(np.stack([base, 255 - base, base], axis=-1))


@pytest.mark.parametrize("width, height", EXTREME_SHAPES)
@pytest.mark.parametrize("size", [320, 608])
def test_torch_letterbox_places_any_shape_on_the_square(width, height, size):
    canvas, geo = dt.letterbox(_pattern(width, height), size, 0.5)
    assert tuple(canvas.shape) == (3, size, size) and torch.isfinite(canvas).all()
    new_w, new_h = round(width * geo.scale), round(height * geo.scale)
    assert 0 <= geo.offset_x <= size - max(1, min(size, new_w)) and 0 <= geo.offset_y <= size - max(1, min(size, new_h))


@pytest.mark.parametrize("width, height", EXTREME_SHAPES)
def test_torch_classifier_preprocess_of_any_shape_and_any_box(width, height):
    from varipipe.pipelines.variants.classifier import crop
    from varipipe.pipelines.variants.classifier_torch import preprocess

    image = _pattern(width, height)
    for box in (None, (0.0, 0.0, 0.4, 0.4), (width + 5.0, height + 5.0, width + 9.0, height + 9.0),
                (float("nan"), 0.0, 3.0, 3.0)):
        part = crop(image, box)
        assert part.shape[0] >= 1 and part.shape[1] >= 1
        out = preprocess(part, 224)
        assert tuple(out.shape) == (3, 224, 224) and torch.isfinite(out).all()
    if max(width, height) >= 20 * min(width, height):  # thin: the centre square only, as the ONNX path
        side = max(1, round(min(width, height) * 0.875))
        top, left = (height - side) // 2, (width - side) // 2
        centre = image[top:top + side, left:left + side].float()
        out = preprocess(image, 224)
        assert out.min() >= centre.min() and out.max() <= centre.max()


def _darknet_spec(**params) -> VariantSpec:
    return VariantSpec("detector", "d", "torch", "varipipe.pipelines.variants.detector_torch:make", input_size=32,
                       params={"model": "yolov3-tiny", **params})


def test_random_weight_detector_builds_its_cfg_without_the_model_files(tmp_path, monkeypatch):
    from tests.unit.test_darknet import TINY_CFG

    def no_files(name, cache=None):
        raise AssertionError(f"random weights must not need the files of {name}")

    monkeypatch.setattr(dt, "model_files", no_files)
    cfg = TINY_CFG.replace("classes=2", "classes=80").replace("filters=14", "filters=170").replace(
        "filters=7", "filters=85")
    (tmp_path / "n.cfg").write_text(cfg)
    det = build_variant(_darknet_spec(weights="random", arch_config=str(tmp_path / "n.cfg")))
    det.load()
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    out = det.infer([Payload(image=image), Payload(image=image)])
    # the heads start at RetinaNet's prior: nothing reaches the threshold, as on most photos
    assert [len(d.items) for d in out] == [0, 0] and det.class_names[0] == "person"


def test_detector_weights_must_be_named_ones_and_random_only_where_implemented():
    with pytest.raises(SpecError, match="params.weights"):
        build_variant(_darknet_spec(weights="imagenet"))
    with pytest.raises(SpecError, match="arch 'yolov10'"):
        build_variant(_darknet_spec(weights="random", arch="yolov10"))
