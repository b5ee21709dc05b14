"""Online calibration on scripted batches: estimator, minimum samples, bounds, decay, the
LLM's tokens, the corrected profile, the state file, the loop's calibration step (issue 18)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from varipipe.adapter.calibration import (
    TAIL_MIN_SAMPLES,
    Z95,
    Z99,
    Calibration,
    CalibrationSettings,
    Calibrator,
    FileCalibrationStore,
    calibrate,
    make_calibrator,
)
from varipipe.adapter.loop import ControlLoop
from varipipe.adapter.policies import make_policy
from varipipe.adapter.policy import Forecast, PolicyContext
from varipipe.adapter.synthetic import vision_caption_like
from varipipe.errors import ConfigError
from varipipe.records import (
    SLA,
    BatchTimes,
    Decision,
    DecisionStatus,
    Observation,
    Profile,
    StageDecision,
)

from .profile_points import point

# Two detector variants and an LLM with a token figure, batches 1 and 4 on cpu:1.
PROFILE = Profile("p", (
    point("det", "small", 1, latency=0.10), point("det", "small", 4, latency=0.30),
    point("det", "big", 1, latency=0.20), point("det", "big", 4, latency=0.60),
    point("llm", "lm", 1, latency=0.50), point("llm", "lm", 4, latency=2.0),
), metadata={"output_tokens_mean": {"llm/lm": 10.0}})


def batches(stage: str, variant: str, seconds, start: float = 0.0, step: float = 1.0, size: int = 1,
            tokens=None, hardware: str = "cpu:1") -> BatchTimes:
    seconds = [float(s) for s in seconds]
    n = len(seconds)
    return BatchTimes(stage, variant, hardware, (size,) * n, tuple(seconds),
                      tuple(start + step * i for i in range(n)), tuple(tokens if tokens is not None else [0] * n))


def noisy(median: float, n: int, sigma: float = 0.1, seed: int = 0) -> np.ndarray:
    return median * np.exp(sigma * np.random.default_rng(seed).standard_normal(n))


def corr(cal: Calibration, stage: str, variant: str):
    return next(c for c in cal.corrections if (c.stage, c.variant) == (stage, variant))


def test_a_host_that_agrees_with_the_profile_keeps_it_exactly():
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", noisy(0.10, 200, seed=1)), batches("llm", "lm", noisy(0.50, 200, seed=2))])
    c = cal.calibration(200.0)
    assert all(x.factor == 1.0 for x in c.corrections)
    assert abs(corr(c, "det", "small").estimate - 1.0) < 0.05  # the estimate is there, within noise
    assert cal.corrected(200.0) is PROFILE  # the profile itself: nothing re-plans on noise


def test_a_slower_host_corrects_the_variant_run_and_its_stage():
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", noisy(0.15, 100))])  # 1.5x the profile's 0.10
    c = cal.calibration(100.0)
    small, big, lm = corr(c, "det", "small"), corr(c, "det", "big"), corr(c, "llm", "lm")
    assert small.source == "variant" and small.factor == pytest.approx(1.5, rel=0.05)
    assert small.observed_p50_s == pytest.approx(0.15, rel=0.1) and small.predicted_p50_s == pytest.approx(0.10)
    # The variant not run takes its stage's correction: it is not mistaken for a faster one.
    assert big.source == "stage" and big.factor == pytest.approx(small.factor) and big.samples == 0
    assert lm.source == "none" and lm.factor == 1.0  # another stage: no evidence, the profile


def test_batches_too_short_to_time_the_host_stay_out_of_their_stage_pool():
    # The flagship's LLM: a template rung of ~20 us a batch and a model of seconds. The template's
    # ratio (x5, timer overhead on 20 us) must not become the model's correction while the model
    # has fewer than min_samples batches of its own.
    profile = Profile("p", (point("llm", "template", 1, latency=2e-5), point("llm", "lm", 1, latency=1.5)))
    cal = Calibrator(profile)
    cal.add([batches("llm", "template", noisy(1e-4, 120)), batches("llm", "lm", noisy(1.5 * 1.3, 8, seed=3))])
    c = cal.calibration(120.0)
    template, lm = corr(c, "llm", "template"), corr(c, "llm", "lm")
    assert template.source == "variant" and template.factor == 4.0 and template.clipped  # its own: harmless
    assert lm.source == "none" and lm.factor == 1.0  # 8 timed batches: too few for the stage's pool
    cal.add([batches("llm", "lm", noisy(1.5 * 1.3, 12, seed=4), start=200.0)])
    lm = corr(cal.calibration(220.0), "llm", "lm")
    assert lm.source == "variant" and lm.factor == pytest.approx(1.3, rel=0.1)


def test_a_stage_that_ran_only_untimed_batches_has_no_pool_and_no_error():
    # twitter-eval's LLM stage runs only the template: every batch is under POOL_MIN_PREDICTED_S,
    # so the stage's pool is empty (this raised IndexError in the simulator at t=10 s).
    profile = Profile("p", (point("llm", "template", 1, latency=2e-5), point("llm", "lm", 1, latency=1.5)))
    cal = Calibrator(profile)
    cal.add([batches("llm", "template", noisy(1e-4, 120))])
    c = cal.calibration(120.0)
    assert corr(c, "llm", "template").source == "variant"
    assert corr(c, "llm", "lm").source == "none" and corr(c, "llm", "lm").factor == 1.0


def test_the_prediction_is_for_the_same_batch_size_interpolated_between_measured_ones():
    cal = Calibrator(PROFILE)
    # Batches of 2 and 3: the profile measured 1 (0.10 s) and 4 (0.30 s): 0.1667 and 0.2333 s.
    cal.add([batches("det", "small", [0.1667 * 1.3] * 20, size=2), batches("det", "small", [0.2333 * 1.3] * 20, size=3)])
    assert corr(cal.calibration(40.0), "det", "small").factor == pytest.approx(1.3, rel=0.01)


def test_minimum_samples_before_a_correction_is_in_force():
    settings = CalibrationSettings(min_samples=10)
    cal = Calibrator(PROFILE, settings)
    cal.add([batches("det", "small", [0.2] * 9)])
    assert corr(cal.calibration(9.0), "det", "small").source == "none"
    cal.add([batches("det", "small", [0.2], start=9.0)])
    c = corr(cal.calibration(10.0), "det", "small")
    assert c.source == "variant" and c.factor == pytest.approx(2.0) and c.samples == 10


def test_factors_are_bounded():
    cal = Calibrator(PROFILE, CalibrationSettings(max_factor=4.0))
    cal.add([batches("det", "small", [1.0] * 20)])  # 10x
    c = corr(cal.calibration(20.0), "det", "small")
    assert c.factor == 4.0 and c.clipped and c.estimate == pytest.approx(10.0)


def test_old_batches_decay_and_the_estimate_follows_the_host():
    half_life = 20.0
    cal = Calibrator(PROFILE, CalibrationSettings(half_life_s=half_life))
    cal.add([batches("det", "small", noisy(0.10, 100, 0.05, seed=3))])  # t = 0..99 at profile speed
    slow = noisy(0.20, 60, 0.05, seed=4)  # then 2x, one batch a second
    cal.add([batches("det", "small", slow[:5], start=100.0)])
    assert corr(cal.calibration(105.0), "det", "small").factor == 1.0  # 5 new batches against 100 old
    cal.add([batches("det", "small", slow[5:], start=105.0)])
    # Three half-lives on, the new batches outweigh the old ones: the host's new speed is in force.
    assert corr(cal.calibration(100.0 + 3 * half_life), "det", "small").factor == pytest.approx(2.0, rel=0.05)
    # With no new batches, the estimate keeps what the newest said (weights are relative).
    assert corr(cal.calibration(10_000.0), "det", "small").factor == pytest.approx(2.0, rel=0.05)


def test_the_median_is_not_moved_by_a_tail_that_moves_the_mean():
    tail = np.r_[noisy(0.10, 80, 0.05, seed=5), [1.0] * 20]  # a fifth of the batches 10x (stalls)
    factors = {}
    for estimator in ("median", "trimmed", "mean"):
        cal = Calibrator(PROFILE, CalibrationSettings(estimator=estimator))
        cal.add([batches("det", "small", np.random.default_rng(6).permutation(tail))])
        factors[estimator] = corr(cal.calibration(100.0), "det", "small").estimate
    assert factors["median"] == pytest.approx(1.0, abs=0.1)
    assert factors["mean"] > 2.5  # 0.8 + 0.2 x 10
    assert factors["median"] < factors["trimmed"] < factors["mean"]


def test_the_llm_is_calibrated_per_generated_token():
    # An item takes 0.2 s of prompt plus 0.03 s a generated token on this host: the profile's
    # 0.50 s is for its 10 tokens, so the host runs at speed 1.0 for prompts and tokens alike.
    rng = np.random.default_rng(7)
    tokens = rng.integers(3, 25, 300)
    seconds = (0.2 + 0.03 * tokens) * np.exp(0.02 * rng.standard_normal(300))
    cal = Calibrator(PROFILE)
    cal.add([batches("llm", "lm", seconds, tokens=tokens)])
    c = corr(cal.calibration(300.0), "llm", "lm")
    assert c.token_share == pytest.approx(0.6, abs=0.05)  # 0.3 of the 0.5 s grow with tokens
    # The planner's factor: the speed (1.0) times the live median work, (0.4 + 0.6 * median tokens / 10).
    expected = 0.4 + 0.6 * np.median(tokens) / 10.0
    assert c.work == pytest.approx(expected, rel=0.02)
    assert c.factor == pytest.approx(expected, rel=0.03)
    # Per token, the ratios no longer spread with the caption's length: the speed is steady.
    per_batch = Calibrator(PROFILE, CalibrationSettings(per_token=False))
    per_batch.add([batches("llm", "lm", seconds, tokens=tokens)])
    assert per_batch.calibration(300.0).corrections[-1].token_share is None


def test_batches_that_spread_wider_than_the_profile_widen_the_planned_tail():
    # The host's median is the profile's, but its batches spread as a lognormal of sigma 0.3
    # against the profile's 0.078 (p99 / p50 = 1.2): the median factor alone would plan
    # p99 = 1.2 x p50, which a quarter of these batches exceed.
    sigma_profile = math.log(1.2) / Z99
    seconds = noisy(0.10, 400, sigma=0.3, seed=11)
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", seconds, step=0.1)])  # 40 s: about one half-life, ~400 effective batches
    c = corr(cal.calibration(40.0), "det", "small")
    assert c.factor == 1.0  # the middle agrees with the profile
    assert c.tail == pytest.approx(0.3 / sigma_profile, rel=0.15) and c.in_force
    out = cal.corrected(40.0)
    for p in (p for p in out.points if p.key[:2] == ("det", "small")):
        assert p.latency_p50_s == pytest.approx(0.10 if p.batch == 1 else 0.30)
        assert p.latency_p99_s == pytest.approx(p.latency_p50_s * math.exp(Z99 * c.tail * sigma_profile))
        assert p.latency_p95_s == pytest.approx(p.latency_p50_s * math.exp(Z95 * c.tail * sigma_profile))
    b1 = next(p for p in out.points if p.key[:3] == ("det", "small", 1))
    assert np.mean(seconds > b1.latency_p99_s) < 0.03  # the planned p99 now holds for the batches seen
    assert np.mean(seconds > 1.2 * 0.10) > 0.2  # the profile's did not
    assert out.metadata["calibration_tail"] == {"det/small": pytest.approx(c.tail, abs=1e-6),
                                                "det/big": pytest.approx(c.tail, abs=1e-6)}
    # A variant without batches takes the stage's tail (below); another stage keeps the profile's;
    # tail=False plans on the factor alone.
    assert corr(cal.calibration(40.0), "det", "big").tail == pytest.approx(c.tail)
    assert next(p for p in out.points if p.key[:3] == ("llm", "lm", 1)) == PROFILE.points[4]
    off = Calibrator(PROFILE, CalibrationSettings(tail=False))
    off.add([batches("det", "small", seconds, step=0.1)])
    assert off.corrected(40.0) is PROFILE


def test_a_tail_is_measured_against_each_batch_sizes_own_profiled_spread():
    # Batch 1 profiled narrow (p99 / p50 = 1.05), batch 4 wide (2.0); the host spreads each as
    # profiled, with most batches of size 1: pooled raw, their spread would look wider than the
    # profile's median, but against each size's own it is the profile's: nothing is in force.
    prof = Profile("p", (point("det", "small", 1, latency=0.10, latency_p99_s=0.105),
                         point("det", "small", 4, latency=0.30, latency_p99_s=0.60)))
    rng = np.random.default_rng(15)
    sizes = np.where(rng.random(600) < 0.7, 1, 4)
    sig = np.where(sizes == 1, math.log(1.05), math.log(2.0)) / Z99
    seconds = np.where(sizes == 1, 0.10, 0.30) * np.exp(sig * rng.standard_normal(600))
    cal = Calibrator(prof)
    cal.add([BatchTimes("det", "small", "cpu:1", tuple(int(x) for x in sizes), tuple(seconds),
                        tuple(0.05 * i for i in range(600)), (0,) * 600)])
    c = corr(cal.calibration(30.0), "det", "small")
    assert c.tail == 1.0 and c.factor == 1.0
    assert cal.corrected(30.0) is prof


def test_a_tail_needs_its_own_batches_and_never_narrows_the_profile():
    wide = noisy(0.10, TAIL_MIN_SAMPLES - 1, sigma=0.3, seed=12)
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", wide)])
    assert corr(cal.calibration(100.0), "det", "small").tail == 1.0  # too few for a 95th percentile
    steady = Calibrator(PROFILE)
    steady.add([batches("det", "small", noisy(0.20, 200, sigma=0.01, seed=13))])
    c = corr(steady.calibration(200.0), "det", "small")
    assert c.factor == pytest.approx(2.0, rel=0.02) and c.tail == 1.0
    b1 = next(p for p in steady.corrected(200.0).points if p.key[:3] == ("det", "small", 1))
    assert b1.latency_p99_s == pytest.approx(2.0 * 0.12, rel=0.02)  # the profile's own tail, scaled


def test_a_variant_without_a_tail_of_its_own_takes_its_stages():
    # "small" ran 300 batches on a host that stalls (sigma 0.3 against the profile's 0.078); "big"
    # only 5 so far. Were "big" planned on the profile's tail it would look narrower than "small"
    # for want of batches, and the planner would move to it, then back once its own showed.
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", noisy(0.10, 300, sigma=0.3, seed=21), step=0.1),
             batches("det", "big", noisy(0.20, 5, sigma=0.3, seed=22), start=30.0, step=0.1)])
    small, big = corr(cal.calibration(31.0), "det", "small"), corr(cal.calibration(31.0), "det", "big")
    assert small.tail > 2 and big.tail == pytest.approx(small.tail, rel=0.1)
    # With batches enough of its own (TAIL_MIN_SAMPLES at least), a variant's own tail counts.
    cal.add([batches("det", "big", noisy(0.20, 100, sigma=0.01, seed=23), start=31.0, step=0.1)])
    assert corr(cal.calibration(41.0), "det", "big").tail == 1.0


def test_calibrate_takes_tails_beside_plain_factors():
    out = calibrate(PROFILE, {}, tails={("llm", "lm"): 3.0})
    lm1 = next(p for p in out.points if p.key[:3] == ("llm", "lm", 1))
    assert lm1.latency_p50_s == 0.5 and lm1.latency_p99_s == pytest.approx(0.5 * 1.2 ** 3)
    assert lm1.throughput_rps == PROFILE.points[4].throughput_rps
    assert calibrate(PROFILE, {}, tails={("llm", "lm"): 1.0}) is PROFILE


def test_tokens_that_do_not_vary_leave_the_batch_as_the_unit():
    cal = Calibrator(PROFILE)
    cal.add([batches("llm", "lm", [0.75] * 50, tokens=[10] * 50)])
    c = corr(cal.calibration(50.0), "llm", "lm")
    assert c.token_share is None and c.factor == pytest.approx(1.5)


def test_batches_the_profile_cannot_predict_are_counted_not_used():
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", [0.2] * 5, hardware="gpu:T4"), batches("det", "nope", [0.2] * 5)])
    c = cal.calibration(10.0)
    assert c.unmatched == 10 and all(x.samples == 0 for x in c.corrections)


def test_the_corrected_profile_scales_latencies_and_throughput():
    out = calibrate(PROFILE, {("det", "big"): 2.0})
    for old, new in zip(PROFILE.points, out.points, strict=True):
        f = 2.0 if (old.stage, old.variant) == ("det", "big") else 1.0
        assert new.latency_p50_s == pytest.approx(old.latency_p50_s * f)
        assert new.latency_p99_s == pytest.approx(old.latency_p99_s * f)
        assert new.mean_latency_s == pytest.approx(old.mean_latency_s * f)
        assert new.throughput_rps == pytest.approx(old.throughput_rps / f)
        assert new.accuracy == old.accuracy
    assert out.metadata["calibration"] == {"det/big": 2.0}
    assert calibrate(PROFILE, {("det", "big"): 1.0}) is PROFILE


def test_the_state_file_keeps_the_corrections_across_a_restart(tmp_path):
    cal = Calibrator(PROFILE)
    cal.add([batches("det", "small", noisy(0.13, 60, seed=8)), batches("llm", "lm", noisy(0.4, 40, seed=9))])
    store = FileCalibrationStore.beside(tmp_path / "state" / "vision.json")
    assert store.path.name == "vision.calibration.json"
    store.save(cal)
    again = Calibrator(PROFILE)
    assert store.load(again) == 100
    assert again.calibration(100.0).corrections == cal.calibration(100.0).corrections
    store.path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="calibration"):
        store.load(Calibrator(PROFILE))


def test_settings_are_checked_and_no_calibration_is_none():
    with pytest.raises(ValueError, match="estimator"):
        CalibrationSettings(estimator="mode")
    with pytest.raises(ValueError, match="bounds"):
        CalibrationSettings(min_factor=2.0)

    @dataclasses.dataclass
    class Opts:
        calibration: bool = True
        calibration_settings: dict = dataclasses.field(default_factory=dict)

    assert make_calibrator(PROFILE, Opts(calibration=False)) is None
    assert make_calibrator(PROFILE, Opts(calibration_settings={"half_life_s": 5.0})).settings.half_life_s == 5.0
    with pytest.raises(ConfigError, match="known: estimator"):
        make_calibrator(PROFILE, Opts(calibration_settings={"halflife": 5.0}))


# --------------------------------------------------------------------- the loop


def _observation(t: float, rps: float) -> Observation:
    return Observation(time_s=t, interval_s=10.0, arrival_rps=rps)


def test_the_loop_plans_on_the_corrected_profile():
    profile = vision_caption_like()
    ctx = PolicyContext(None, profile, SLA(3.0), cost_mode="shared", cluster_cores=2.0)
    plain = make_policy("ipa", ctx).decide(_observation(0.0, 2.0), Forecast(2.0), Decision(stages=()))
    llm = plain.stage("llm")
    cal = Calibrator(profile)
    applied: list[Decision] = []
    loop = ControlLoop(make_policy("ipa", ctx), applied.append, calibrator=cal)
    # The LLM variant in force runs 3x slower than profiled, on every batch.
    p50 = next(p.latency_p50_s for p in profile.points if (p.stage, p.variant, p.batch, p.hardware)
               == ("llm", llm.variant, 1, llm.hardware))
    cal.add([batches("llm", llm.variant, [3 * p50] * 30, hardware=llm.hardware)])
    entry = loop.step(_observation(30.0, 2.0), Forecast(2.0))
    assert loop.status().calibration == "applied"
    d = entry.decision
    assert d is not None and d.predicted_latency_s != plain.predicted_latency_s
    # The decision prices the LLM at the corrected figure.
    assert d.stage("llm").latency_s > 2 * llm.latency_s or d.stage("llm").variant != llm.variant


class _NoProfile:
    name = "plain"

    def decide(self, observation, forecast, current):
        return Decision(stages=(StageDecision("det", "small", 1, 1),), status=DecisionStatus.FIXED)


def test_a_policy_without_set_profile_is_said_to_plan_uncorrected():
    loop = ControlLoop(_NoProfile(), lambda d: None, calibrator=Calibrator(PROFILE))
    loop.step(_observation(0.0, 1.0), Forecast(1.0))
    assert loop.status().calibration == "not-supported"
    assert ControlLoop(_NoProfile(), lambda d: None).status().calibration == "off"


def _held_loop() -> tuple[ControlLoop, Calibrator, list[Decision]]:
    """A loop that applied "big", then held a slower move to "small" (same basis); its calibrator."""
    def d(variant: str, load: float, latency: float) -> Decision:
        return Decision(stages=(StageDecision("det", variant, 1, 1),), status=DecisionStatus.OPTIMAL,
                        load_rps=load, predicted_latency_s=latency)

    script = [d("big", 10.0, 0.2), d("small", 9.0, 0.3), d("small", 9.0, 0.3)]

    class Scripted:
        name = "scripted"

        def decide(self, observation, forecast, current):
            return script.pop(0)

    cal = Calibrator(PROFILE)
    applied: list[Decision] = []
    loop = ControlLoop(Scripted(), applied.append, calibrator=cal)
    loop.step(_observation(0.0, 10.0), Forecast(10.0))
    assert loop.step(_observation(10.0, 9.0), Forecast(9.0)).action == "held"  # a slower move, same basis
    return loop, cal, applied


def test_a_calibration_shift_lifts_the_hysteresis():
    loop, cal, applied = _held_loop()
    cal.add([batches("det", "big", [0.4] * 20, start=10.0)])  # "big" is 2x slower than its profile
    assert loop.step(_observation(30.0, 9.0), Forecast(9.0)).action == "applied"
    assert [x.stage("det").variant for x in applied] == ["big", "small"]
    assert math.isclose(cal.calibration(30.0).factor("det", "big"), 2.0)


def test_a_wider_tail_alone_lifts_the_hysteresis_too():
    loop, cal, applied = _held_loop()
    # "big" keeps its profiled median (no factor) but its batches spread far wider than profiled.
    cal.add([batches("det", "big", noisy(0.20, 400, sigma=0.4, seed=14), start=10.0, step=0.05)])
    c = corr(cal.calibration(30.0), "det", "big")
    assert c.factor == 1.0 and c.tail > 3
    assert loop.step(_observation(30.0, 9.0), Forecast(9.0)).action == "applied"
    assert [x.stage("det").variant for x in applied] == ["big", "small"]


def test_a_variant_idle_for_hours_keeps_the_correction_its_batches_measured():
    # Weights decayed against `now` underflowed to zero after ~1000 half-lives (8 h at 30 s): the
    # weighted median was then the smallest ratio ever seen and its standard error NaN (the
    # two-day simulation warned "invalid value encountered in scalar divide").
    ratios = noisy(1.5, 100, sigma=0.3, seed=5)
    fresh, idle = Calibrator(PROFILE), Calibrator(PROFILE)
    for cal in (fresh, idle):
        cal.add([batches("det", "small", 0.10 * ratios)])
    with np.errstate(all="raise"):  # no NaN on the way
        late = idle.calibration(100.0 + 10 * 3600.0)
    now = fresh.calibration(100.0)
    assert corr(late, "det", "small").factor == pytest.approx(corr(now, "det", "small").factor)
    assert corr(late, "det", "small").factor == pytest.approx(1.5, rel=0.1)
    assert corr(late, "det", "big").factor == pytest.approx(corr(now, "det", "big").factor)  # the pool too
