"""Resumability logic of a profile run (no models, no processes)."""

from dataclasses import asdict
from pathlib import Path

import pytest

from varipipe.errors import ProfileError, UnknownNameError
from varipipe.profiler.measure import cpu_hardware
from varipipe.profiler.plan import FULL, QUICK, PointKey
from varipipe.profiler.run import (
    ProfileRequest,
    _check_names,
    _existing,
    group_by_variant,
    order_points,
)
from varipipe.profiler.store import save_profile
from varipipe.records import Profile
from varipipe.spec import find_spec

from .profile_points import point


def test_group_by_variant_keeps_first_seen_order():
    keys = [PointKey("a", "x", 1, "cpu:1"), PointKey("a", "x", 2, "cpu:1"), PointKey("a", "y", 1, "cpu:1"),
            PointKey("a", "x", 4, "cpu:1")]
    assert group_by_variant(keys) == [("a", "x", "cpu:1", (1, 2, 4)), ("a", "y", "cpu:1", (1,))]


def test_order_points_follows_the_plan_and_keeps_strangers_last():
    keys = [PointKey("det", "small", b, "cpu:1") for b in (1, 2, 4)]
    pts = [point(batch=4), point(batch=16), point(batch=1), point(batch=2)]
    assert [p.batch for p in order_points(pts, keys)] == [1, 2, 4, 16]


def _req(out: Path, policy=QUICK, **kw) -> ProfileRequest:
    return ProfileRequest(spec=find_spec("identity-chain"), out=out, batches=(1, 2), hardware=(cpu_hardware(1),),
                          policy=policy, command="varipipe profile", **kw)


def test_resuming_in_another_sampling_mode_is_refused(tmp_path):
    out = tmp_path / "p.json"
    save_profile(Profile("identity-chain", (point("first", "fast"),), {"sampling": asdict(QUICK)}), out)
    assert _existing(_req(out, QUICK)).points[0].variant == "fast"
    with pytest.raises(ProfileError) as e:
        _existing(_req(out, FULL))
    assert e.value.field == "metadata.sampling.name"


def test_resuming_a_profile_measured_before_windows_is_refused(tmp_path):
    out = tmp_path / "p.json"
    old_sampling = {"name": "quick", "min_samples": 30, "max_seconds": 3.0}
    save_profile(Profile("identity-chain", (point("first", "fast"),), {"sampling": old_sampling}), out)
    with pytest.raises(ProfileError, match="before the profiler measured in windows") as e:
        _existing(_req(out, QUICK))
    assert e.value.field == "metadata.sampling"


def test_resuming_a_file_of_another_pipeline_is_refused(tmp_path):
    out = tmp_path / "p.json"
    save_profile(Profile("other", (point(),)), out)
    with pytest.raises(ProfileError, match="pipeline"):
        _existing(_req(out))


def test_unknown_stage_or_variant_names_the_known_ones(tmp_path):
    with pytest.raises(UnknownNameError, match="first"):
        _check_names(_req(tmp_path / "p.json", stages=("nope",)))
    with pytest.raises(UnknownNameError, match="slow"):
        _check_names(_req(tmp_path / "p.json", variants=("nope",)))
