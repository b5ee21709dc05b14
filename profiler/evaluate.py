"""Run each variant of a stage on the bundled inputs and turn its outputs into accuracy figures.

The running (``stage_outputs``) is I/O; the choice of figures
(``stage_accuracy``) is pure given the outputs, and follows the order of
``accuracy``'s docstring: measured, else declared, else agreement x the
reference's declared figure.

A pipeline spec may name an ``evaluation`` ("module:callable") that returns an
``EvaluationSet``: inputs with known answers and a per-stage score. Stages it
scores get *measured* figures (the mean score, upstream stages on their
default variants), whatever their output type; this is how a new pipeline
gets measured accuracy without code here. Three optional methods extend it
(the flagship's set, ``profiler/vision_eval.py``, has all three):

- ``stage_payloads(stage, served) -> list[Payload] | None``: the inputs a
  stage's accuracy is measured on, when they are not the served ones (the
  classifier on crops of the ground-truth boxes, the LLM on ground-truth
  labels); ``served`` are the profiler's inputs with default upstream outputs.
- ``aggregate(stage, payloads, outputs) -> SetScore | None``: a set-level
  metric (mAP is not a mean of per-image scores); None: the mean of ``score``.
- ``source(stage, items) -> str``: what the stored figure's source says
  (the set, the split, the metric).

Declared figures of the spec stay beside the measured ones, in the metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from varipipe.errors import SpecError
from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.profiler import accuracy as acc
from varipipe.profiler.eval_set import references_for
from varipipe.records import Accuracy, AccuracyKind, PipelineSpec, StageSpec

__all__ = ["StageAccuracy", "EvaluationSet", "SetScore", "load_evaluation", "output_kind", "stage_outputs",
           "stage_accuracy", "accuracy_payloads", "items_per_request"]


class EvaluationSet(Protocol):
    """A pipeline's labelled inputs and how each stage's output is scored against them."""

    def payloads(self) -> list[Payload]:
        """Fresh input payloads with unique request ids (the profiler's inputs for every stage)."""
        ...

    def metric(self, stage: str) -> str:
        """What ``score`` measures for ``stage``; "" when this set does not score that stage."""
        ...

    def score(self, stage: str, payload: Payload, output: StageOutput) -> float | None:
        """The stage's task metric for one input in [0, 1]; None where the input has no known answer."""
        ...


@dataclass(frozen=True)
class SetScore:
    """A set-level figure (``EvaluationSet.aggregate``): its value, the inputs it covers, a breakdown (AP per class)."""

    value: float
    items: int
    breakdown: Mapping[str, float] = field(default_factory=dict)


def accuracy_payloads(evaluation: EvaluationSet | None, stage: str, served: Sequence[Payload]) -> list[Payload]:
    """The inputs ``stage``'s accuracy is measured on: the set's own for that stage, else ``served``."""
    own = getattr(evaluation, "stage_payloads", None)
    chosen = own(stage, served) if own is not None else None
    return list(served) if chosen is None else list(chosen)


def load_evaluation(spec: PipelineSpec) -> EvaluationSet | None:
    """Build the spec's ``evaluation`` ("module:callable"), or None when it names none."""
    if not spec.evaluation:
        return None
    import importlib

    module_name, _, attr = spec.evaluation.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise SpecError(spec.source_file or "<spec>", "evaluation", f"cannot import {spec.evaluation!r}: {e}") from e
    return factory()


@dataclass(frozen=True)
class StageAccuracy:
    """The figure stored for each variant of a stage, and the numbers behind them."""

    stage: str
    figures: Mapping[str, Accuracy]
    reference: str | None = None
    agreement: Mapping[str, float] = field(default_factory=dict)  # raw agreement with the reference
    measured: Mapping[str, float] = field(default_factory=dict)  # raw task metric on the eval set
    metric: str = ""
    items: int = 0
    # The spec's published figures (exact weights and input size), kept beside the measured ones.
    declared: Mapping[str, Accuracy] = field(default_factory=dict)
    breakdown: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # variant -> e.g. AP per class

    def to_metadata(self) -> dict[str, Any]:
        def fig(a: Accuracy) -> dict[str, Any]:
            return {"value": a.value, "kind": a.kind.value, "source": a.source}

        return {
            "reference": self.reference, "metric": self.metric, "items": self.items,
            "agreement_with_reference": dict(self.agreement), "measured": dict(self.measured),
            "figures": {k: fig(a) for k, a in self.figures.items()},
            "declared": {k: fig(a) for k, a in self.declared.items()},
            "breakdown": {k: dict(v) for k, v in self.breakdown.items()},
        }

    @classmethod
    def from_metadata(cls, stage: str, d: Mapping[str, Any]) -> StageAccuracy:
        def fig(v: Mapping[str, Any]) -> Accuracy:
            return Accuracy(v["value"], AccuracyKind(v["kind"]), v["source"])

        return cls(stage, {k: fig(v) for k, v in d["figures"].items()}, d.get("reference"),
                   d.get("agreement_with_reference", {}), d.get("measured", {}), d.get("metric", ""),
                   d.get("items", 0), {k: fig(v) for k, v in d.get("declared", {}).items()},
                   d.get("breakdown", {}))


def output_kind(output: StageOutput) -> str:
    """"detections" | "classifications" | "caption" | "other", by the output's record type."""
    from varipipe.pipelines.variants import outputs as o

    for kind, cls in (("detections", o.Detections), ("classifications", o.Classifications), ("caption", o.Caption)):
        if isinstance(output, cls):
            return kind
    return "other"


def items_per_request(outputs: Sequence[StageOutput]) -> float:
    """Mean number of items a stage handled per request (crops per image); 1 without ``items``."""
    counts = [len(getattr(o, "items", ())) or 1 for o in outputs]
    return sum(counts) / len(counts) if counts else 1.0


def stage_outputs(stage: StageSpec, payloads: Sequence[Payload], threads: int,
                  builder: Callable[..., Variant] = build_variant,
                  ) -> tuple[dict[str, list[StageOutput]], dict[str, str]]:
    """Every variant's output for every payload, one request at a time; and the variants that failed."""
    result: dict[str, list[StageOutput]] = {}
    failed: dict[str, str] = {}
    for spec in stage.variants:
        try:
            variant = builder(spec, threads=threads)
            variant.load()
        except Exception as e:  # noqa: BLE001 - one broken variant must not stop the others' profile
            failed[spec.name] = f"{type(e).__name__}: {e}"
            continue
        try:
            result[spec.name] = [variant.infer([p])[0] for p in payloads]
        finally:
            variant.unload()
    return result, failed


def _dets(output: Any) -> list[acc.Det]:
    return [acc.Det(tuple(d.box), d.label, d.score) for d in output.items]


def _labels(output: Any) -> list[str]:
    return [c.label for c in output.items]


def _agreement(kind: str, mine: Sequence[Any], ref: Sequence[Any]) -> float | None:
    if kind == "detections":
        return acc.detection_agreement([_dets(o) for o in mine], [_dets(o) for o in ref])
    flat_mine = [label for o in mine for label in _labels(o)]
    flat_ref = [label for o in ref for label in _labels(o)]
    return acc.top1_agreement(flat_mine, flat_ref)


_METRICS = {"detections": f"mAP@{acc.IOU_THRESHOLD:g}", "classifications": "top-1",
            "caption": "content-word F1 vs reference captions"}


def _missing_figure(stage: StageSpec, name: str, why: str) -> SpecError:
    return stage.variant(name).spec_error(".accuracy", f"no accuracy figure: {why}; declare one with its source")


def stage_accuracy(stage: StageSpec, payloads: Sequence[Payload], outputs: Mapping[str, Sequence[StageOutput]],
                   evaluation: EvaluationSet | None = None) -> StageAccuracy:
    """The figure of every variant of ``stage`` from its outputs on ``payloads``."""
    if evaluation is not None and evaluation.metric(stage.name):
        return _measured_by(evaluation, stage, payloads, outputs)
    first = next(iter(outputs.values()), [])
    kind = output_kind(first[0]) if first else "other"
    if kind == "caption" and evaluation is not None:
        raise _missing_figure(stage, stage.variants[0].name, "the pipeline's evaluation set does not score this "
                              "stage (its metric() is empty for it)")
    if kind == "caption":
        return _measured_captions(stage, payloads, outputs)
    ref = acc.choose_reference(stage.variants) if kind in ("detections", "classifications") else None
    if ref is not None and ref.name not in outputs:
        ref = None  # the reference failed to run: declared figures only
    agreement: dict[str, float] = {}
    if ref is not None:
        for name, outs in outputs.items():
            a = _agreement(kind, outs, outputs[ref.name])
            if a is not None:
                agreement[name] = a
    figures: dict[str, Accuracy] = {}
    for v in stage.variants:
        if v.accuracy is not None:
            figures[v.name] = v.accuracy
        elif ref is not None and v.name in agreement:
            figures[v.name] = acc.agreement_accuracy(agreement[v.name], ref, _METRICS[kind], len(payloads))
        elif v.name not in outputs:
            continue  # failed to run: it gets no figure and no points
        else:
            raise _missing_figure(stage, v.name, f"none declared and no agreement score for {kind} outputs")
    return StageAccuracy(stage.name, figures, ref.name if ref else None, agreement, {}, _METRICS.get(kind, ""),
                         len(payloads))


def _measured_captions(stage: StageSpec, payloads: Sequence[Payload],
                       outputs: Mapping[str, Sequence[StageOutput]]) -> StageAccuracy:
    labelled = [i for i, p in enumerate(payloads) if references_for(p.request_id)]
    if not labelled:
        raise _missing_figure(stage, stage.variants[0].name, "no payload has reference captions")
    measured, figures = {}, {}
    for name, outs in outputs.items():
        scores = [acc.caption_f1(outs[i].text, references_for(payloads[i].request_id)) for i in labelled]  # type: ignore[attr-defined]
        measured[name] = sum(scores) / len(scores)
        figures[name] = Accuracy(max(measured[name], acc.MIN_ACCURACY), AccuracyKind.MEASURED,
                                 f"mean {_METRICS['caption']} on the {len(labelled)} bundled photos of "
                                 f"profiler/EVAL_SET.md (upstream: default variants)")
    return StageAccuracy(stage.name, figures, None, {}, measured, _METRICS["caption"], len(labelled))


def _declared(stage: StageSpec) -> dict[str, Accuracy]:
    return {v.name: v.accuracy for v in stage.variants if v.accuracy is not None}


def _measured_by(evaluation: EvaluationSet, stage: StageSpec, payloads: Sequence[Payload],
                 outputs: Mapping[str, Sequence[StageOutput]]) -> StageAccuracy:
    """The set's figure for every variant that ran: its ``aggregate``, else the mean of its per-input scores."""
    metric = evaluation.metric(stage.name)
    aggregate = getattr(evaluation, "aggregate", None)
    describe = getattr(evaluation, "source", None)
    measured: dict[str, float] = {}
    figures: dict[str, Accuracy] = {}
    breakdown: dict[str, Mapping[str, float]] = {}
    items = 0
    for name, outs in outputs.items():
        whole = aggregate(stage.name, payloads, outs) if aggregate is not None else None
        if whole is None:
            scores = [s for p, o in zip(payloads, outs, strict=True)
                      if (s := evaluation.score(stage.name, p, o)) is not None]
            if not scores:
                raise _missing_figure(stage, name, f"the evaluation set scored none of the {len(payloads)} inputs")
            whole = SetScore(sum(scores) / len(scores), len(scores))
        items = whole.items
        measured[name] = whole.value
        if whole.breakdown:
            breakdown[name] = dict(whole.breakdown)
        source = (describe(stage.name, items) if describe is not None else
                  f"mean {metric} on {items} labelled inputs of the pipeline's evaluation set "
                  f"(upstream: default variants)")
        figures[name] = Accuracy(max(whole.value, acc.MIN_ACCURACY), AccuracyKind.MEASURED, source)
    return StageAccuracy(stage.name, figures, None, {}, measured, metric, items, _declared(stage), breakdown)
