"""The PyTorch runtimes on a CUDA GPU (skipped where torch finds none: CI has no GPU).

On the GPU host itself, benchmarks/gpu_profile.sh runs the detector check of these tests too
(``metadata.gpu_check`` of its profile), since pytest's plugins are not installed there.
"""

from __future__ import annotations

import json

import pytest
import torch

from varipipe.pipelines.variant import Payload, build_variant
from varipipe.pipelines.variants._torch_runtime import gpu_label
from varipipe.profiler.inputs import bundled_images
from varipipe.profiler.measure import Hardware, measure_variant
from varipipe.profiler.plan import WindowPolicy
from varipipe.records import VariantSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

DETECTOR = VariantSpec("detector", "yolov3-tiny-416", "opencv_dnn", "varipipe.pipelines.variants.detector:make",
                       input_size=416, params={"model": "yolov3-tiny"})
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 256, "max_position_embeddings": 512,
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def photos():
    return [Payload(request_id=n, image=img) for n, img in bundled_images()]


def test_detector_in_half_precision_on_the_gpu_finds_what_float32_finds(photos):
    """fp16 has an 11-bit significand: boxes move by well under a pixel, scores by under 0.02."""
    from varipipe.profiler.gpu_inputs import CarriedVariant
    from varipipe.profiler.gpu_profile import detector_check
    from varipipe.records import Accuracy, AccuracyKind

    gpu = build_variant(DETECTOR, device="gpu")
    assert type(gpu).__name__ == "TorchDetector" and gpu.hardware == gpu_label() and gpu.dtype_name() == "float16"
    cv = CarriedVariant(DETECTOR, "real", Accuracy(0.3, AccuracyKind.DECLARED, "test"), "opencv_dnn")
    check = detector_check(cv, Hardware(gpu_label(), 1, "gpu"), photos)
    assert check["rows_compared"] > 0 and check["box_max_abs_px"] < 1.0 and check["score_max_abs"] < 0.02
    same, total = (int(v) for v in check["images_with_the_same_labels"].split("/"))
    assert same >= total - 1  # one label at the 0.25 threshold may flip


def test_classifier_on_the_gpu_agrees_with_the_cpu(photos):
    spec = VariantSpec("classifier", "efficientnet-lite0", "onnx", "varipipe.pipelines.variants.classifier:make",
                       input_size=224, params={"model": "efficientnet-lite0"})
    gpu, cpu = build_variant(spec, device="gpu"), build_variant(spec, device="cpu")
    gpu.load()
    cpu.load()
    pairs = [(a.items[0], b.items[0]) for a, b in zip(cpu.infer(photos), gpu.infer(photos), strict=True)]
    assert sum(a.class_id == b.class_id for a, b in pairs) >= len(pairs) - 1
    assert max(abs(a.score - b.score) for a, b in pairs) < 0.05


def test_llm_static_cache_compiles_and_generates_the_recorded_counts(tmp_path):
    from varipipe.pipelines.variants.llm_torch import RecordedPrompt, Recording, TorchCaptioner

    (tmp_path / "arch.json").write_text(json.dumps({"config": TINY_LLAMA}))
    spec = VariantSpec("llm", "tiny", "torch", "varipipe.pipelines.variants.llm_torch:make",
                       params={"model": "tiny", "prompt_style": "completion", "max_tokens": 24, "weights": "random",
                               "recording": str(tmp_path / "rec.json"), "arch_config": str(tmp_path / "arch.json")})
    llm = TorchCaptioner(spec, device="gpu")
    prompt = llm.prompt(Payload(text="a cat"))[0]
    rec = Recording("tiny", {prompt: RecordedPrompt((1, 5, 6, 7), 6)}, "test")
    (tmp_path / "rec.json").write_text(json.dumps(rec.to_json()))
    llm.load()
    for batch in (1, 4, 1):  # a new batch size, then an old one: compiled graphs are reused
        out = llm.infer([Payload(text="a cat")] * batch)
        assert [c.tokens for c in out] == [6] * batch


def test_gpu_memory_is_measured_with_torch_cuda(photos):
    policy = WindowPolicy("t", window_batches=3, window_min_s=0.0, max_seconds=1.0, warmup_batches=1,
                          reference_calls=1)
    spec = VariantSpec("detector", "yolov3-tiny-320", "torch", "varipipe.pipelines.variants.detector_torch:make",
                       input_size=320, params={"model": "yolov3-tiny"})
    m = measure_variant(spec, Hardware(gpu_label(), 1, "gpu"), photos, (1, 8), policy, isolate=False)
    small, large = m.points
    assert 15 < small.memory_mb <= large.memory_mb  # 17.7 MB of fp16 weights (8.8M parameters), more at batch 8
