"""End-to-end accuracy of a configuration, measured, beside the product of its stage figures.

**Definition.** For a configuration (one variant per stage of vision-caption),
each photo of the split goes through the detector, then the classifier on the
detector's real output, then the LLM stage on the real upstream outputs, one
request at a time, exactly as served. The LLM's answers are scored by the LLM
stage's own metric (the set's ``LlmTask``) against the photo's ground truth.
End-to-end accuracy = the mean of those scores over every LLM input of the
split. Its 95 % interval resamples *photos* (all of a photo's inputs together).

**Compared with** the product of the configuration's stage figures (detector
mAP x classifier top-1 x LLM stage metric, each measured on the same split in
isolation: ``benchmarks/ladder_accuracy.py``): the figure the optimizer
maximises (log-sum of profile accuracies). The ratio says how far the
multiplicative model can be trusted.

``ChainRunner`` runs the stages (variants built by an injected builder) and
keeps each prefix's outputs, so configurations that share a detector run it once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.profiler.paired import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_interval
from varipipe.records import PipelineSpec

__all__ = ["EndToEnd", "ChainRunner", "spanning_configurations", "measure_end_to_end"]


@dataclass(frozen=True)
class EndToEnd:
    configuration: tuple[str, ...]  # one variant per stage, in stage order
    accuracy: float
    ci_low: float
    ci_high: float
    items: int  # LLM inputs scored
    photos: int
    stage_figures: tuple[float, ...]

    @property
    def product(self) -> float:
        return math.prod(self.stage_figures)

    @property
    def ratio(self) -> float:
        """Measured / product: 1 where the multiplicative model is right."""
        return self.accuracy / self.product if self.product > 0 else math.inf

    @property
    def product_inside_interval(self) -> bool:
        return self.ci_low <= self.product <= self.ci_high


def spanning_configurations(ladders: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
    """Configurations spanning the ladders (each stage's variants cheapest first): all cheapest, all
    costliest, all middle rungs, and each stage at one end with the others at the other end."""
    low = tuple(r[0] for r in ladders)
    high = tuple(r[-1] for r in ladders)
    mid = tuple(r[len(r) // 2] for r in ladders)
    configs = [low, high, mid]
    for s in range(len(ladders)):
        configs.append(low[:s] + (high[s],) + low[s + 1:])
        configs.append(high[:s] + (low[s],) + high[s + 1:])
    return list(dict.fromkeys(configs))


class ChainRunner:
    """Runs a pipeline's stages over photos one request at a time, keeping every prefix's outputs."""

    def __init__(self, spec: PipelineSpec, photos: Sequence[Payload], threads: int = 1,
                 builder: Callable[..., Variant] = build_variant) -> None:
        self.spec = spec
        self.photos = list(photos)
        self.threads = threads
        self.builder = builder
        self._outputs: dict[tuple[str, ...], list[StageOutput]] = {}

    def run(self, stage_index: int, variant: str, payloads: Sequence[Payload]) -> list[StageOutput]:
        """One variant of one stage on ``payloads``, one request at a time (batch 1, as in the ladder run)."""
        stage = self.spec.stages[stage_index]
        v = self.builder(stage.variant(variant), threads=self.threads)
        v.load()
        try:
            return [v.infer([p])[0] for p in payloads]
        finally:
            v.unload()

    def upstream(self, prefix: tuple[str, ...]) -> list[dict[str, StageOutput]]:
        """Per photo, the outputs of the first ``len(prefix)`` stages run with those variants."""
        names = self.spec.stage_names
        found: list[dict[str, StageOutput]] = [{} for _ in self.photos]
        for k in range(1, len(prefix) + 1):
            key = prefix[:k]
            if key not in self._outputs:
                inputs = [dataclasses.replace(p, outputs=dict(up), trace=[]) for p, up in zip(self.photos, found,
                                                                                             strict=True)]
                self._outputs[key] = self.run(k - 1, key[-1], inputs)
            for up, out in zip(found, self._outputs[key], strict=True):
                up[names[k - 1]] = out
        return found


def measure_end_to_end(runner: ChainRunner, evaluation, configuration: tuple[str, ...],
                       stage_figures: Mapping[str, Mapping[str, float]],
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> EndToEnd:
    """Run ``configuration`` end to end on the runner's photos and score the last stage's answers.

    ``evaluation`` is a ``VisionCaptionEvaluation`` with an LLM task; ``stage_figures`` maps stage ->
    variant -> the stage figure measured on the same split.
    """
    names = runner.spec.stage_names
    last = names[-1]
    if not evaluation.metric(last):
        raise ValueError(f"the evaluation set does not score stage {last!r}: no end-to-end metric to measure")
    upstream = runner.upstream(configuration[:-1])
    per_photo = [evaluation.llm_payloads([p], {p.request_id: up}) for p, up in zip(runner.photos, upstream,
                                                                                   strict=True)]
    flat = [q for qs in per_photo for q in qs]
    outputs = runner.run(len(names) - 1, configuration[-1], flat)
    scores = [evaluation.score(last, q, o) for q, o in zip(flat, outputs, strict=True)]
    owner = np.repeat(np.arange(len(per_photo)), [len(qs) for qs in per_photo])
    kept = np.array([s is not None for s in scores])
    values, owner = np.array([s for s in scores if s is not None], dtype=float), owner[kept]
    if not values.size:
        raise ValueError(f"the evaluation set scored none of the {len(flat)} end-to-end answers")

    def mean_of(photos: np.ndarray) -> float:
        counts = np.bincount(photos, minlength=len(per_photo))
        weights = counts[owner]
        return float((values * weights).sum() / weights.sum()) if weights.sum() else 0.0

    r = bootstrap_interval(mean_of, len(per_photo), resamples, seed)
    figures = tuple(stage_figures[s][v] for s, v in zip(names, configuration, strict=True))
    return EndToEnd(configuration, r.estimate, r.ci_low, r.ci_high, int(values.size), len(per_photo), figures)
