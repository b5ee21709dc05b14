from dataclasses import replace

import pytest

from varipipe.profiler.plan import (
    FULL,
    FULL_POINT_CAP_S,
    QUICK,
    QUICK_POINT_CAP_S,
    SEQUENTIAL_MAX_BATCH,
    PointKey,
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


def test_a_cpu_limit_leaves_the_gpu_grid_whole():
    v = _variant("llm", "batched", cpu_max_batch_size=4)
    assert variant_batches(v, (1, 2, 4, 8, 16), "cpu:2") == (1, 2, 4)
    assert variant_batches(v, (1, 2, 4, 8, 16), "gpu:h200") == (1, 2, 4, 8, 16)


def test_on_a_gpu_every_variant_batches_natively():
    v = _variant("llm", "slow", native=False)
    assert variant_batches(v, (1, 2, 4, 8, 16), "gpu:h200") == (1, 2, 4, 8, 16)
    assert variant_batches(v, (1, 2, 4, 8, 16), "cpu:1") == (1, 2, 4)


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


def test_full_and_quick_follow_perf_analyzers_defaults():
    assert (FULL.window_batches, FULL.window_min_s, FULL.stable_windows, FULL.tolerance, FULL.max_windows) == (
        50, 1.0, 3, 0.10, 10)
    assert QUICK.stable_windows == 3 and QUICK.window_batches < FULL.window_batches
    assert QUICK.max_seconds == QUICK_POINT_CAP_S and FULL.max_seconds == FULL_POINT_CAP_S
    assert QUICK.with_max_seconds(10.0).max_seconds == 10.0
    assert QUICK.with_max_seconds(None) is QUICK


@pytest.mark.parametrize("bad", [dict(window_batches=0), dict(min_window_batches=60), dict(max_seconds=0),
                                 dict(stable_windows=1), dict(stable_windows=11), dict(widen_factor=1.0),
                                 dict(tolerance=0.0), dict(stability_percentile=101)])
def test_policy_validates(bad):
    with pytest.raises(ValueError, match="window policy"):
        replace(FULL, **bad)
