"""Run each variant of a stage on the bundled inputs and turn its outputs into accuracy figures.

The running (``stage_outputs``) is I/O; the choice of figures
(``stage_accuracy``) is pure given the outputs, and follows the order of
``accuracy``'s docstring: measured, else declared, else agreement x the
reference's declared figure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from varipipe.errors import SpecError
from varipipe.pipelines.variant import Payload, StageOutput, Variant, build_variant
from varipipe.profiler import accuracy as acc
from varipipe.profiler.eval_set import references_for
from varipipe.records import Accuracy, AccuracyKind, StageSpec

__all__ = ["StageAccuracy", "output_kind", "stage_outputs", "stage_accuracy", "items_per_request"]


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

    def to_metadata(self) -> dict[str, Any]:
        return {
            "reference": self.reference, "metric": self.metric, "items": self.items,
            "agreement_with_reference": dict(self.agreement), "measured": dict(self.measured),
            "figures": {k: {"value": a.value, "kind": a.kind.value, "source": a.source} for k, a in self.figures.items()},
        }

    @classmethod
    def from_metadata(cls, stage: str, d: Mapping[str, Any]) -> StageAccuracy:
        figs = {k: Accuracy(v["value"], AccuracyKind(v["kind"]), v["source"]) for k, v in d["figures"].items()}
        return cls(stage, figs, d.get("reference"), d.get("agreement_with_reference", {}), d.get("measured", {}),
                   d.get("metric", ""), d.get("items", 0))


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
    return SpecError(stage.variants[0].source or "<spec>", f"stages.{stage.name}.variants.{name}.accuracy",
                     f"no accuracy figure: {why}; declare one with its source")


def stage_accuracy(stage: StageSpec, payloads: Sequence[Payload], outputs: Mapping[str, Sequence[StageOutput]],
                   ) -> StageAccuracy:
    """The figure of every variant of ``stage`` from its outputs on ``payloads``."""
    first = next(iter(outputs.values()), [])
    kind = output_kind(first[0]) if first else "other"
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
