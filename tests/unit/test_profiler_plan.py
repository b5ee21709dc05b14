import pytest

from varipipe.profiler.plan import (
    FULL,
    QUICK,
    SEQUENTIAL_MAX_BATCH,
    PointKey,
    SamplingPolicy,
    missing,
    plan,
    variant_batches,
)
from varipipe.records import SLA, PipelineSpec, StageSpec, VariantSpec

from .profile_points import point


def _variant(stage, name, native=True, **params):
    return VariantSpec(stage=stage, name=name, runtime="identity", factory="m:f", native_batching=native, params=params)


def _spec():
    det = StageSpec("det", (_variant("det", "small"), _variant("det", "big")), "small")
    llm = StageSpec("llm", (_variant("llm", "tiny", native=False),), "tiny")
    return PipelineSpec("p", (det, llm), SLA(1.0))


def test_sequential_runtime_is_profiled_up_to_its_limit():
    v = _variant("llm", "tiny", native=False)
    assert variant_batches(v, (1, 2, 4, 8, 16)) == tuple(b for b in (1, 2, 4) if b <= SEQUENTIAL_MAX_BATCH)
    assert variant_batches(_variant("d", "x", max_batch_size=8), (1, 2, 4, 8, 16)) == (1, 2, 4, 8)
    assert variant_batches(_variant("d", "x"), (16, 1)) == (1, 16)


def test_plan_covers_grid_in_order_and_filters():
    keys = plan(_spec(), (1, 2, 8), ("cpu:1", "cpu:2"))
    assert len(keys) == 2 * 2 * 3 + 1 * 2 * 2
    assert keys[0] == PointKey("det", "small", 1, "cpu:1")
    assert [k.batch for k in keys if k.variant == "tiny" and k.hardware == "cpu:1"] == [1, 2]
    only = plan(_spec(), (1,), ("cpu:1",), stages=["det"], variants=["big"])
    assert only == [PointKey("det", "big", 1, "cpu:1")]


def test_missing_keeps_order_and_skips_measured_points():
    keys = plan(_spec(), (1, 2), ("cpu:1",))
    done = [point("det", "small", 2, "cpu:1"), point("llm", "tiny", 1, "cpu:1")]
    left = missing(keys, done)
    assert PointKey("det", "small", 2, "cpu:1") not in left
    assert left == [k for k in keys if k not in {PointKey.of(p) for p in done}]


def test_full_policy_needs_200_samples_for_small_batches_whatever_the_time():
    assert not FULL.done(batch=4, samples=199, elapsed_s=1e6)
    assert FULL.done(batch=4, samples=200, elapsed_s=FULL.min_seconds)
    assert not FULL.done(batch=4, samples=200, elapsed_s=0.1)  # min_seconds not yet reached


def test_full_policy_time_boxes_large_batches_above_a_floor():
    assert FULL.done(batch=8, samples=FULL.floor_samples, elapsed_s=FULL.max_seconds)
    assert not FULL.done(batch=8, samples=FULL.floor_samples - 1, elapsed_s=FULL.max_seconds * 10)
    assert not FULL.done(batch=8, samples=50, elapsed_s=FULL.max_seconds / 2)


def test_quick_policy_time_boxes_everything():
    assert QUICK.done(batch=1, samples=QUICK.floor_samples, elapsed_s=QUICK.max_seconds)
    assert QUICK.done(batch=1, samples=QUICK.min_samples, elapsed_s=0.0)
    assert QUICK.with_max_seconds(10.0).max_seconds == 10.0
    assert QUICK.with_max_seconds(None) is QUICK


def test_policy_validates():
    with pytest.raises(ValueError):
        SamplingPolicy("bad", min_samples=0, max_seconds=1)
    with pytest.raises(ValueError):
        SamplingPolicy("bad", min_samples=1, max_seconds=0)
