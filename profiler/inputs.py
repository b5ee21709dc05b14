"""Real inputs for every stage: bundled photos, run through the upstream stages once.

Stage i is profiled on what it sees in serving: the detector on photos, the
classifier on the detector's output for those photos, the LLM on the
classifier's labels. ``stage_inputs`` runs each upstream stage's *default*
variant once over the photos and hands stage i payloads carrying the outputs
of the stages before it.

The photos are the colour photographs that ship inside scikit-image
(``skimage.data``; no download), plus their mirror images so that the
accuracy sets and the timing pool are twice as varied. Greyscale photos are
stacked to three channels, as the HTTP ingress does with ``convert("RGB")``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from varipipe.errors import ModelUnavailableError
from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.records import PipelineSpec

__all__ = ["BUNDLED_PHOTOS", "bundled_images", "stage_inputs", "payloads_for_stage", "text_inputs"]

# skimage.data photographs bundled in the wheel (loading them needs no network).
# Photographs of everyday scenes with COCO objects first; camera and coins are greyscale.
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle", "camera", "coins")
# Prompts for a text-input pipeline (no image stage upstream).
_TEXT_PROMPTS = ("a cat sitting on a sofa", "a cup of coffee on a table", "a person riding a motorcycle",
                 "a rocket on the launch pad", "an astronaut in a space suit", "an old clock on a wall")


def _as_rgb(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.shape[-1] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img.astype(np.uint8))


def bundled_images(names: Sequence[str] = BUNDLED_PHOTOS, mirrored: bool = True) -> list[tuple[str, np.ndarray]]:
    """(name, HxWx3 uint8 RGB) for each bundled photo, and its mirror image when asked."""
    import skimage.data

    out = []
    for name in names:
        try:
            img = getattr(skimage.data, name)()
        except Exception as e:  # noqa: BLE001 - skimage raises several kinds for a missing file
            raise ModelUnavailableError(f"skimage.data.{name} cannot be loaded offline: {e}") from e
        if isinstance(img, tuple):  # stereo pairs: keep the left view
            img = img[0]
        rgb = _as_rgb(np.asarray(img))
        out.append((name, rgb))
        if mirrored:
            out.append((f"{name}-mirrored", np.ascontiguousarray(rgb[:, ::-1])))
    return out


def text_inputs() -> list[tuple[str, str]]:
    return [(f"prompt-{i}", t) for i, t in enumerate(_TEXT_PROMPTS)]


def _run_all(variant: Variant, payloads: list[Payload], stage: str) -> None:
    for p in payloads:  # one at a time: the upstream outputs do not depend on batching
        (out,) = variant.infer([p])
        p.outputs[stage] = out


def stage_inputs(
    spec: PipelineSpec,
    threads: int = 1,
    builder: Callable[..., Variant] = build_variant,
    images: Sequence[tuple[str, np.ndarray]] | None = None,
) -> list[Payload]:
    """Payloads carrying every stage's default-variant output (the upstream of any stage)."""
    from varipipe.profiler.evaluate import load_evaluation

    evaluation = load_evaluation(spec)
    if evaluation is not None and images is None:  # the pipeline's own labelled inputs
        payloads = evaluation.payloads()
    elif spec.input_kind == "text":
        payloads = [Payload(request_id=n, text=t) for n, t in text_inputs()]
    else:
        payloads = [Payload(request_id=n, image=img) for n, img in (images or bundled_images())]
    for stage in spec.stages[:-1]:  # the last stage's outputs feed nothing
        variant = builder(stage.variant(stage.default_variant), threads=threads)
        variant.load()
        try:
            _run_all(variant, payloads, stage.name)
        finally:
            variant.unload()
    return payloads


def payloads_for_stage(spec: PipelineSpec, stage: str, full: Sequence[Payload]) -> list[Payload]:
    """Copies of ``full`` keeping only the outputs of the stages before ``stage``."""
    names = spec.stage_names
    upstream = set(names[: names.index(stage)])
    out = []
    for p in full:
        kept: dict[str, StageOutput] = {k: v for k, v in p.outputs.items() if k in upstream}
        out.append(dataclasses.replace(p, outputs=kept, trace=[]))
    return out
