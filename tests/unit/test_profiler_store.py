import json

import pytest

from varipipe.errors import ProfileError
from varipipe.profiler.store import (
    SCHEMA_VERSION,
    default_profile_path,
    load_profile,
    profile_from_dict,
    profile_to_dict,
    save_profile,
)
from varipipe.records import Profile

from .profile_points import point

_STEADY = dict(windows=4, stable=True, latency_cv=0.03, throughput_cv=0.02, reference_before_s=0.01,
               reference_after_s=0.012)


def _profile():
    pts = (point(batch=1, **_STEADY), point(batch=2, p99_low_samples=True, windows=12, stable=False),
           point(stage="llm", variant="tiny", hardware="cpu:2"))
    return Profile("p", pts, metadata={"host_cpu": "x", "command": "varipipe profile"}, fanout={"llm": 1.0})


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "sub" / "p.json"
    save_profile(_profile(), path)
    assert load_profile(path, pipeline="p") == _profile()
    assert not (tmp_path / "sub" / "p.json.tmp").exists()  # written atomically
    doc = json.loads(path.read_text())
    assert set(doc) >= {"schema_version", "pipeline", "metadata", "points"}
    assert doc["points"][0]["hardware"] == "cpu:1"


def _doc():
    return profile_to_dict(_profile())


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(schema_version=99), "schema_version"),
        (lambda d: d.update(pipeline=""), "pipeline"),
        (lambda d: d.update(points=[]), "points"),
        (lambda d: d["points"][1].pop("latency_p99_s"), "points[1].latency_p99_s"),
        (lambda d: d["points"][0].update(batch=0), "points[0].batch"),
        (lambda d: d["points"][0].update(accuracy=1.5), "points[0].accuracy"),
        (lambda d: d["points"][2].update(accuracy_kind="guessed"), "points[2].accuracy_kind"),
        (lambda d: d["points"][0].update(latency_p50_s=1.0), "points[0].latency_p99_s"),
        (lambda d: d["points"][0].update(memory_mb=-1), "points[0].memory_mb"),
        (lambda d: d["points"].append(dict(d["points"][0])), "points[3]"),
        (lambda d: d.update(fanout={"llm": -1}), "fanout"),
        (lambda d: d.update(metadata=[]), "metadata"),
        (lambda d: d["points"][0].update(windows=0), "points[0].windows"),
        (lambda d: d["points"][0].update(stable="yes"), "points[0].stable"),
        (lambda d: d["points"][0].update(latency_cv=-0.1), "points[0].latency_cv"),
        (lambda d: d["points"][0].update(throughput_cv=float("nan")), "points[0].throughput_cv"),
        (lambda d: d["points"][0].update(reference_after_s=0), "points[0].reference_after_s"),
    ],
)
def test_broken_documents_name_the_field(mutate, field):
    doc = _doc()
    mutate(doc)
    with pytest.raises(ProfileError) as e:
        profile_from_dict(doc, "prof.json")
    assert e.value.file == "prof.json" and e.value.field == field
    assert str(e.value).startswith(f"prof.json: {field}:")


def test_a_profile_from_before_windows_loads_with_unknown_steadiness():
    doc = _doc()
    for raw in doc["points"]:
        for k in (*_STEADY, "windows", "stable"):
            raw.pop(k, None)
    old = profile_from_dict(doc, "old.json")
    assert all(p.windows is None and p.stable is None and p.host_drift is None for p in old.points)
    assert old.points[0].latency_p50_s == _profile().points[0].latency_p50_s


def test_host_drift_is_the_reference_after_over_before():
    assert _profile().points[0].host_drift == pytest.approx(0.2)


def test_mismatched_pipeline_is_an_error(tmp_path):
    path = tmp_path / "p.json"
    save_profile(_profile(), path)
    with pytest.raises(ProfileError, match="'p', but 'other' was asked for"):
        load_profile(path, pipeline="other")


def test_unreadable_and_invalid_json_name_the_file(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema_version": 1,\n "points": [')
    with pytest.raises(ProfileError) as e:
        load_profile(bad)
    assert e.value.file == str(bad) and e.value.field.startswith("(line")


def test_default_profile_path_points_into_the_package():
    path = default_profile_path("vision-caption")
    assert path.name == "vision-caption.json" and path.parent.name == "profiles"
    assert SCHEMA_VERSION == 1


@pytest.mark.parametrize("name", ["vision-caption", "vision-caption-ci", "identity-chain"])
def test_shipped_profiles_load_and_cover_their_spec(name):
    from varipipe.profiler.plan import missing, plan
    from varipipe.spec import find_spec

    path = default_profile_path(name)
    assert path.exists(), f"shipped profile {path.name} is missing (profiler/profiles/)"
    prof = load_profile(path, pipeline=name)
    spec = find_spec(name)
    # The simulator and the planner take the pipeline's order from the profile (Profile.stages): a
    # profile merged with its LLM points first (dbc0452) simulated the LLM before the detector and
    # made `deploy render`'s decision disagree with the spec.
    assert prof.stages == spec.stage_names, f"{path.name} lists its stages as {prof.stages}"
    failed = prof.metadata.get("failed", {})
    left = [k for k in missing(plan(spec), prof.points) if not any(k2.startswith(f"{k.stage}/{k.variant}") for k2 in failed)]
    assert left == [], f"{path.name} lacks {len(left)} points, e.g. {left[:3]}"
    assert prof.metadata["command"].startswith("varipipe profile")
    assert {"host_cpu", "cpu_count", "libraries", "date", "tool_version", "mode"} <= set(prof.metadata)
