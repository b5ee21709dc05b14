"""A profile run measures a stage's accuracy on the evaluation set's own inputs for that stage
(``stage_payloads``), takes a set-level figure from ``aggregate`` and its source from ``source``, and keeps
the spec's declared figures beside the measured ones (identity variants, no models)."""

from __future__ import annotations

import dataclasses

import pytest

from varipipe.pipelines.variant import Payload
from varipipe.profiler.evaluate import SetScore
from varipipe.profiler.inputs import stage_inputs
from varipipe.profiler.measure import cpu_hardware
from varipipe.profiler.plan import QUICK
from varipipe.profiler.run import ProfileRequest, _accuracies, _Run
from varipipe.records import AccuracyKind
from varipipe.spec import find_spec

SEEN: dict[str, list[str]] = {}


class _Eval:
    """Scores stage 'first' as a set (aggregate), stage 'second' per item on inputs of its own."""

    def payloads(self):
        return [Payload(request_id=f"photo-{i}", image=None) for i in range(3)]

    def metric(self, stage):
        return {"first": "set metric", "second": "item metric"}.get(stage, "")

    def score(self, stage, payload, output):
        SEEN.setdefault(stage, []).append(payload.request_id)
        return 1.0 if payload.request_id.endswith("#0") else 0.0

    def stage_payloads(self, stage, served):
        if stage != "second":
            return None
        return [Payload(request_id=f"{p.request_id}#{k}") for p in served for k in range(2)]

    def aggregate(self, stage, payloads, outputs):
        return SetScore(0.42, len(payloads), {"cat": 0.5}) if stage == "first" else None

    def source(self, stage, items):
        return f"{self.metric(stage)} on {items} test inputs of a fake set"


def make_eval() -> _Eval:
    return _Eval()


@pytest.fixture
def spec():
    return dataclasses.replace(find_spec("identity-chain"), evaluation=f"{__name__}:make_eval")


def test_stage_payloads_and_aggregate_reach_the_stored_figures(spec, tmp_path):
    req = ProfileRequest(spec=spec, out=tmp_path / "p.json", batches=(1,), hardware=(cpu_hardware(1),),
                         policy=QUICK, command="test", variants=("fast", "slow"))
    run = _Run(req, None, [])
    inputs = stage_inputs(spec)
    SEEN.clear()
    failed: dict[str, str] = {}
    figures = _accuracies(req, run, ["first", "second"], inputs, 1, failed)
    assert SEEN["second"][:6] == ["photo-0#0", "photo-0#1", "photo-1#0", "photo-1#1", "photo-2#0", "photo-2#1"]
    second = figures["second"]
    assert second.items == 6 and second.figures["fast"].value == pytest.approx(0.5)
    assert second.figures["fast"].kind is AccuracyKind.MEASURED
    assert second.figures["fast"].source == "item metric on 6 test inputs of a fake set"
    assert second.declared["fast"].kind is AccuracyKind.DECLARED  # the spec's figure, kept beside
    first = figures["first"]
    assert first.measured == {"fast": 0.42, "slow": 0.42} and first.breakdown["fast"] == {"cat": 0.5}
    stored = run.metadata["accuracy"]
    assert stored["first"]["breakdown"]["slow"] == {"cat": 0.5}
    assert stored["second"]["declared"]["fast"]["kind"] == "declared"
