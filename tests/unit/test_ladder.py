"""Ladders: rungs sorted by cost, adjacent rungs compared with the paired test that fits, claims only when resolved;
the ladder engine and the end-to-end harness on fake variants and a synthetic labelled set."""

from __future__ import annotations

import itertools

import pytest

from varipipe.pipelines.variant import Payload
from varipipe.pipelines.variants.outputs import (
    Caption,
    Classification,
    Classifications,
    Detections,
)
from varipipe.profiler.detection_map import Scored, Truth, match_image
from varipipe.profiler.end_to_end import ChainRunner, measure_end_to_end, spanning_configurations
from varipipe.profiler.evaluate import accuracy_payloads
from varipipe.profiler.labelled import load_labelled_set
from varipipe.profiler.ladder import (
    BOOTSTRAP_TEST,
    MCNEMAR_TEST,
    Rung,
    candidate_ladders,
    compare,
    degraded_settings,
    describe,
    dominated_by,
    ladder,
    rung_interval,
)
from varipipe.profiler.ladder_run import load_run, run_stage, save_run, stage_ladder, stage_rungs
from varipipe.profiler.vision_eval import CLASSIFIER, DETECTOR, LLM, VisionCaptionEvaluation
from varipipe.records import SLA, PipelineSpec, StageSpec, VariantSpec

from .evalset_fixture import write_set


def _rung(name, latency, outcomes, accuracy=0.5):
    return Rung("s", name, accuracy, len(outcomes), latency, outcomes=tuple(outcomes))


def test_rungs_are_sorted_by_cost_and_right_wrong_outcomes_get_mcnemar():
    big = _rung("big", 0.03, [1.0] * 40 + [0.0] * 10)
    small = _rung("small", 0.01, [1.0] * 20 + [0.0] * 30)
    mid = _rung("mid", 0.02, [1.0] * 21 + [0.0] * 29)
    lad = ladder("s", "top-1", [big, small, mid])
    assert [r.variant for r in lad.rungs] == ["small", "mid", "big"]
    low, high = lad.comparisons
    assert low.test == MCNEMAR_TEST and (low.only_cheaper, low.only_costlier) == (0, 1) and not low.resolved
    assert "cannot tell" in low.verdict
    assert high.resolved and high.difference == pytest.approx(19 / 50) and high.verdict == "costlier rung more accurate"
    assert lad.rises and not lad.resolved_rises
    assert "p = " in describe(high) and "smallest resolvable" in describe(high)


def test_a_costlier_rung_that_is_worse_is_said_to_be():
    lad = ladder("s", "top-1", [_rung("cheap", 0.01, [1.0] * 30), _rung("dear", 0.02, [0.0] * 30)])
    assert lad.comparisons[0].verdict == "costlier rung LESS accurate" and not lad.rises


def test_graded_scores_get_an_item_bootstrap_and_image_matches_a_map_bootstrap():
    graded = compare(_rung("a", 0.01, [0.2, 0.4, 0.3] * 10), _rung("b", 0.02, [0.6, 0.5, 0.7] * 10))
    assert graded.test.startswith("paired bootstrap over items") and graded.resolved and graded.ci_low > 0
    truths = [Truth("cat", (0, 0, 10, 10))]
    hit = match_image([Scored("cat", (0, 0, 10, 10), 0.9)], truths)
    miss = match_image([], truths)
    det = compare(_rung("a", 0.01, [miss] * 12), _rung("b", 0.02, [hit] * 12), resamples=200)
    assert det.test == BOOTSTRAP_TEST and det.difference == pytest.approx(1.0) and det.resolved
    with pytest.raises(ValueError, match="same non-empty items"):
        compare(_rung("a", 0.01, [1.0]), _rung("b", 0.02, [1.0, 0.0]))


def test_a_rung_costlier_and_not_more_accurate_than_another_is_dominated_by_the_cheapest_such():
    rungs = [_rung("a", 0.01, [1.0], 0.30), _rung("b", 0.02, [1.0], 0.30), _rung("c", 0.03, [1.0], 0.25),
             _rung("d", 0.04, [1.0], 0.40), _rung("e", 0.04, [1.0], 0.40), _rung("f", 0.01, [1.0], 0.20)]
    # b: as accurate, dearer; c: dearer and worse; f: as cheap, worse; d and e tie (neither dominates)
    assert dominated_by(rungs) == {"b": "a", "c": "a", "f": "a"}


def test_rungs_sharing_a_weights_file_beyond_the_first_are_degraded_settings():
    model = {"v3-320": "v3", "v3-416": "v3", "v3-416-ms": "v3", "v4-416": "v4", "v10-640": "v10"}
    assert degraded_settings(["v3-320", "v4-416", "v10-640"], model) == 0
    assert degraded_settings(["v3-320", "v3-416", "v10-640"], model) == 1
    assert degraded_settings(["v3-320", "v3-416", "v3-416-ms"], model) == 2


def test_candidate_ladders_use_only_undominated_rungs_and_at_most_one_degraded_setting():
    model = {"m1-s": "m1", "m1-l": "m1", "m1-xl": "m1", "m2": "m2", "m3": "m3", "m4": "m4"}
    rungs = [_rung("m1-s", 0.01, [1.0], 0.2), _rung("m1-l", 0.02, [1.0], 0.3), _rung("m1-xl", 0.03, [1.0], 0.4),
             _rung("m2", 0.04, [1.0], 0.5), _rung("m3", 0.05, [1.0], 0.45), _rung("m4", 0.06, [1.0], 0.6)]
    found = candidate_ladders(rungs, model)
    assert all("m3" not in c for c in found)  # dearer than m2 and less accurate
    assert found[0] in {("m1-s", "m1-l", "m2", "m4"), ("m1-s", "m1-xl", "m2", "m4"), ("m1-l", "m1-xl", "m2", "m4")}
    assert all(degraded_settings(c, model) <= 1 for c in found) and ("m1-s", "m1-l", "m1-xl") not in found
    assert all(len(c) >= 3 for c in found)
    for c in found:  # cheapest first, rising
        acc = [next(r.accuracy for r in rungs if r.variant == v) for v in c]
        assert acc == sorted(acc) and len(set(acc)) == len(acc)
    assert candidate_ladders(rungs[:3], model) == []  # one model: two of three rungs would be degraded


def test_a_rungs_own_interval_brackets_its_figure():
    right = rung_interval(_rung("a", 0.01, [1.0] * 30 + [0.0] * 10), resamples=300)
    assert right.estimate == pytest.approx(0.75) and right.ci_low < 0.75 < right.ci_high
    truths = [Truth("cat", (0, 0, 10, 10))]
    hit, miss = match_image([Scored("cat", (0, 0, 10, 10), 0.9)], truths), match_image([], truths)
    det = rung_interval(_rung("d", 0.01, [hit] * 6 + [miss] * 6), resamples=300)
    # recall 1/2 at precision 1: COCO's 101 recall points give 51 / 101
    assert det.estimate == pytest.approx(51 / 101) and 0.0 < det.ci_low < 0.5 < det.ci_high < 1.0


def test_spanning_configurations_cover_both_ends_of_every_ladder():
    configs = spanning_configurations([["d1", "d2", "d3"], ["c1", "c2"], ["t", "l1", "l2"]])
    assert configs[:3] == [("d1", "c1", "t"), ("d3", "c2", "l2"), ("d2", "c2", "l1")]
    assert ("d3", "c1", "t") in configs and ("d1", "c2", "l2") in configs and len(configs) >= 5
    assert len(set(configs)) == len(configs)


# --- the engine and the end-to-end harness on fakes ------------------------------------------------

class _Fake:
    """A variant whose output is a function of the payload; counts loads and calls."""

    def __init__(self, spec, fn, log):
        self.spec, self.fn, self.log = spec, fn, log

    name = property(lambda self: self.spec.name)
    hardware = property(lambda self: "cpu:1")

    def load(self):
        self.log.append(("load", self.spec.name))

    def unload(self):
        pass

    def infer(self, batch):
        self.log.append(("infer", self.spec.name))
        return [self.fn(p) for p in batch]


def _v(stage, name):
    return VariantSpec(stage=stage, name=name, runtime="fake", factory="m:f")


def _ticks():
    counter = itertools.count()
    return lambda: next(counter) * 0.001


@pytest.fixture
def ev(tmp_path):
    return VisionCaptionEvaluation("test", labelled=load_labelled_set(write_set(tmp_path)), llm_task=_CountTask())


def _perfect_detector(ev):
    def fn(p):
        return ev.ground_truth_upstream(p.request_id)[DETECTOR]
    return fn


def test_the_engine_times_each_call_and_ranks_detectors_by_the_sets_map(ev):
    stage = StageSpec(DETECTOR, (_v(DETECTOR, "blind"), _v(DETECTOR, "perfect")), "blind")
    fns = {"blind": lambda p: Detections((), (1, 1)), "perfect": _perfect_detector(ev)}
    log: list = []
    run = run_stage(stage, ev.payloads(), builder=lambda s, threads: _Fake(s, fns[s.name], log), clock=_ticks(),
                    rounds=4)
    assert run.latency_s == {"blind": pytest.approx(0.001), "perfect": pytest.approx(0.001)}
    assert log.count(("infer", "perfect")) == 3 + 1 + 4  # one per photo; timing: warm-up + one per round
    timing = [name for what, name in log[-8:]]
    assert timing == ["blind", "perfect", "perfect", "blind", "blind", "perfect", "perfect", "blind"]
    lad, figures = stage_ladder(stage, run, ev, resamples=100)
    assert figures.measured["perfect"] == pytest.approx(1.0) and figures.measured["blind"] == 0.0
    assert [r.variant for r in lad.rungs] == ["blind", "perfect"]  # equal cost: by name
    assert lad.comparisons[0].difference == pytest.approx(1.0)
    assert lad.rungs[1].breakdown["car"] == pytest.approx(1.0)


def test_a_saved_run_gives_the_same_rungs_later_and_a_subset_on_request(ev, tmp_path):
    stage = StageSpec(DETECTOR, (_v(DETECTOR, "blind"), _v(DETECTOR, "perfect")), "blind")
    fns = {"blind": lambda p: Detections((), (1, 1)), "perfect": _perfect_detector(ev)}
    run = run_stage(stage, ev.payloads(), builder=lambda s, threads: _Fake(s, fns[s.name], []), clock=_ticks(),
                    rounds=2)
    save_run(tmp_path / "runs", run, "test")
    again = load_run(tmp_path / "runs", DETECTOR, "test")
    assert [(r.variant, r.accuracy, r.latency_s) for r in stage_rungs(stage, again, ev)[0]] == \
        [(r.variant, r.accuracy, r.latency_s) for r in stage_rungs(stage, run, ev)[0]]
    only = load_run(tmp_path / "runs", DETECTOR, "test", ["perfect"])
    assert list(only.outputs) == ["perfect"] and list(only.latency_s) == ["perfect"]
    with pytest.raises(ValueError, match="holds the test split, not dev"):
        load_run(tmp_path / "runs", DETECTOR, "dev")
    with pytest.raises(ValueError, match="no run of nonesuch"):
        load_run(tmp_path / "runs", DETECTOR, "test", ["nonesuch"])
    with pytest.raises(ValueError, match="no saved run of stage 'classifier'"):
        load_run(tmp_path / "runs", CLASSIFIER, "test")


def test_the_engine_scores_classifiers_on_ground_truth_crops(ev):
    stage = StageSpec(CLASSIFIER, (_v(CLASSIFIER, "tabby-only"),), "tabby-only")
    crops = accuracy_payloads(ev, CLASSIFIER, ev.payloads())
    run = run_stage(stage, crops, builder=lambda s, threads: _Fake(
        s, lambda p: Classifications((Classification(281, "tabby cat", 0.9),)), []), clock=_ticks())
    lad, figures = stage_ladder(stage, run, ev)
    assert figures.items == 5 and figures.measured["tabby-only"] == pytest.approx(1 / 5)
    assert lad.rungs[0].outcomes == (0.0, 0.0, 0.0, 1.0, 0.0)


class _CountTask:
    """A stand-in LLM task: 'how many objects?', exact match against the labelled count."""

    metric = "exact match (test task)"

    def payloads(self, item, upstream, image):
        return [Payload(request_id=f"{item.id}?n", image=image, text="How many objects?", outputs=dict(upstream))]

    def score(self, item, payload, output):
        return float(output.text == str(len(item.boxes)))


def _count_llm(p):
    labels = [d for o in p.outputs.values() if isinstance(o, Detections) for d in o.items]
    return Caption(str(len(labels)), 1)


def test_end_to_end_runs_the_real_chain_and_sets_it_beside_the_product(ev):
    spec = PipelineSpec("vc", (
        StageSpec(DETECTOR, (_v(DETECTOR, "blind"), _v(DETECTOR, "perfect")), "perfect"),
        StageSpec(CLASSIFIER, (_v(CLASSIFIER, "c"),), "c"),
        StageSpec(LLM, (_v(LLM, "counter"),), "counter")), SLA(1.0))
    fns = {"blind": lambda p: Detections((), (1, 1)), "perfect": _perfect_detector(ev),
           "c": lambda p: Classifications(()), "counter": _count_llm}
    log: list = []
    runner = ChainRunner(spec, ev.payloads(), builder=lambda s, threads: _Fake(s, fns[s.name], log))
    figures = {DETECTOR: {"blind": 0.001, "perfect": 1.0}, CLASSIFIER: {"c": 0.5}, LLM: {"counter": 0.9}}
    good = measure_end_to_end(runner, ev, ("perfect", "c", "counter"), figures, resamples=100)
    assert good.accuracy == 1.0 and good.items == 3 and good.photos == 3
    assert good.product == pytest.approx(0.45) and good.ratio == pytest.approx(1 / 0.45)
    assert not good.product_inside_interval
    bad = measure_end_to_end(runner, ev, ("blind", "c", "counter"), figures, resamples=100)
    assert bad.accuracy == 0.0  # the LLM answers from the chain's real upstream outputs, not the ground truth
    measure_end_to_end(runner, ev, ("perfect", "c", "counter"), figures, resamples=100)
    assert log.count(("load", "perfect")) == 1  # the detector's outputs are kept for every configuration


def test_end_to_end_needs_an_llm_task(tmp_path):
    ev = VisionCaptionEvaluation("test", labelled=load_labelled_set(write_set(tmp_path)))
    spec = PipelineSpec("vc", (StageSpec(DETECTOR, (_v(DETECTOR, "d"),), "d"), StageSpec(LLM, (_v(LLM, "l"),), "l")),
                        SLA(1.0))
    runner = ChainRunner(spec, ev.payloads(), builder=lambda s, threads: _Fake(s, lambda p: None, []))
    with pytest.raises(ValueError, match="does not score stage 'llm'"):
        measure_end_to_end(runner, ev, ("d", "l"), {}, resamples=10)
