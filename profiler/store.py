"""The profile store: one versioned JSON file per pipeline (issue 5 shape).

    {"schema_version": 1, "pipeline": "...", "metadata": {...},
     "fanout": {"classifier": 1.7},                       # optional
     "points": [{"stage", "variant", "batch", "hardware",
                 "latency_p50_s", "latency_p95_s", "latency_p99_s",
                 "throughput_rps", "memory_mb", "samples",
                 "accuracy", "accuracy_kind", "accuracy_source", ...,
                 "windows", "stable", "latency_cv", "throughput_cv",   # optional: how steady
                 "reference_before_s", "reference_after_s"}]}          # optional: host drift

Loading checks every field and names the file, the point and the field on error.
The stability fields were added without a schema bump: they are optional (absent
in older files, read as None) and older readers ignore them, so files stay
readable both ways.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from varipipe.errors import ProfileError
from varipipe.jsonfile import write_json_atomic
from varipipe.records import AccuracyKind, Profile, ProfilePoint

__all__ = ["SCHEMA_VERSION", "load_profile", "save_profile", "profile_from_dict", "profile_to_dict", "default_profile_path"]

SCHEMA_VERSION = 1

_REQUIRED_STR = ("stage", "variant", "hardware", "accuracy_kind", "accuracy_source")
_REQUIRED_POS = ("latency_p50_s", "latency_p95_s", "latency_p99_s", "throughput_rps")
_REQUIRED_NONNEG = ("memory_mb",)


def default_profile_path(pipeline: str = "vision-caption") -> Path:
    """The shipped profile of a bundled pipeline."""
    return Path(str(resources.files("varipipe.profiler") / "profiles" / f"{pipeline}.json"))


def _point(raw: Any, file: str, i: int) -> ProfilePoint:
    where = f"points[{i}]"
    if not isinstance(raw, dict):
        raise ProfileError(file, where, f"expected an object, got {type(raw).__name__}")
    for k in _REQUIRED_STR:
        if not isinstance(raw.get(k), str) or not raw[k]:
            raise ProfileError(file, f"{where}.{k}", f"must be a non-empty string, got {raw.get(k)!r}")
    for k in (*_REQUIRED_POS, *_REQUIRED_NONNEG, "accuracy"):
        v = raw.get(k)
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            raise ProfileError(file, f"{where}.{k}", f"must be a finite number, got {v!r}")
        if k in _REQUIRED_POS and v <= 0:
            raise ProfileError(file, f"{where}.{k}", f"must be > 0, got {v!r}")
        if k in _REQUIRED_NONNEG and v < 0:
            raise ProfileError(file, f"{where}.{k}", f"must be >= 0, got {v!r}")
    for k in ("batch", "samples"):
        v = raw.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ProfileError(file, f"{where}.{k}", f"must be an integer >= 1, got {v!r}")
    if not 0 < raw["accuracy"] <= 1:
        raise ProfileError(file, f"{where}.accuracy", f"must be in (0, 1], got {raw['accuracy']!r}")
    if raw["accuracy_kind"] not in {k.value for k in AccuracyKind}:
        raise ProfileError(file, f"{where}.accuracy_kind",
                           f"must be one of measured/agreement/declared, got {raw['accuracy_kind']!r}")
    if not raw["latency_p50_s"] <= raw["latency_p95_s"] <= raw["latency_p99_s"]:
        raise ProfileError(file, f"{where}.latency_p99_s", "percentiles must satisfy p50 <= p95 <= p99")
    mean = raw.get("latency_mean_s")
    steadiness = _steadiness(raw, file, where)
    return ProfilePoint(
        stage=raw["stage"], variant=raw["variant"], batch=raw["batch"], hardware=raw["hardware"],
        latency_p50_s=float(raw["latency_p50_s"]), latency_p95_s=float(raw["latency_p95_s"]),
        latency_p99_s=float(raw["latency_p99_s"]), throughput_rps=float(raw["throughput_rps"]),
        memory_mb=float(raw["memory_mb"]), samples=raw["samples"], accuracy=float(raw["accuracy"]),
        accuracy_kind=raw["accuracy_kind"], accuracy_source=raw["accuracy_source"],
        latency_mean_s=float(mean) if isinstance(mean, int | float) else None,
        p99_low_samples=bool(raw.get("p99_low_samples", False)),
        **steadiness,
    )


def _steadiness(raw: dict, file: str, where: str) -> dict[str, Any]:
    """The optional stability fields (absent in profiles made before the profiler used windows)."""
    out: dict[str, Any] = {}
    windows = raw.get("windows")
    if windows is not None and (not isinstance(windows, int) or isinstance(windows, bool) or windows < 1):
        raise ProfileError(file, f"{where}.windows", f"must be an integer >= 1 or absent, got {windows!r}")
    out["windows"] = windows
    stable = raw.get("stable")
    if stable is not None and not isinstance(stable, bool):
        raise ProfileError(file, f"{where}.stable", f"must be true, false or absent, got {stable!r}")
    out["stable"] = stable
    for k, low in (("latency_cv", 0.0), ("throughput_cv", 0.0), ("reference_before_s", None),
                   ("reference_after_s", None)):
        v = raw.get(k)
        if v is None:
            out[k] = None
            continue
        bad = not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v)
        if bad or (v < low if low is not None else v <= 0):
            rule = ">= 0" if low is not None else "> 0"
            raise ProfileError(file, f"{where}.{k}", f"must be a finite number {rule} or absent, got {v!r}")
        out[k] = float(v)
    return out


def _check_one_accuracy_per_variant(points: tuple[ProfilePoint, ...], file: str) -> None:
    """A variant has one accuracy figure (``Profile.variant_accuracy``): its points must agree."""
    first: dict[tuple[str, str], int] = {}
    for i, p in enumerate(points):
        j = first.setdefault((p.stage, p.variant), i)
        if points[j].accuracy != p.accuracy:
            raise ProfileError(file, f"points[{i}].accuracy",
                               f"{p.accuracy!r} differs from {points[j].accuracy!r} at points[{j}], the same "
                               f"variant ({p.stage}/{p.variant}): a variant has one accuracy figure")


def profile_from_dict(data: Any, file: str = "<profile>", pipeline: str | None = None) -> Profile:
    """Validate a parsed profile document; ``pipeline`` checks it is the one expected."""
    if not isinstance(data, dict):
        raise ProfileError(file, "(top level)", f"expected an object, got {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProfileError(file, "schema_version", f"expected {SCHEMA_VERSION}, got {version!r}")
    name = data.get("pipeline")
    if not isinstance(name, str) or not name:
        raise ProfileError(file, "pipeline", f"must be a non-empty string, got {name!r}")
    if pipeline is not None and name != pipeline:
        raise ProfileError(file, "pipeline", f"profile is for {name!r}, but {pipeline!r} was asked for")
    raw_points = data.get("points")
    if not isinstance(raw_points, list) or not raw_points:
        raise ProfileError(file, "points", "must be a non-empty list")
    points = tuple(_point(p, file, i) for i, p in enumerate(raw_points))
    seen: set[tuple[str, str, int, str]] = set()
    for i, p in enumerate(points):
        if p.key in seen:
            raise ProfileError(file, f"points[{i}]", f"duplicate point {p.key}")
        seen.add(p.key)
    _check_one_accuracy_per_variant(points, file)
    fanout = data.get("fanout", {}) or {}
    if not isinstance(fanout, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in fanout.values()
    ):
        raise ProfileError(file, "fanout", f"must map stage names to positive numbers, got {fanout!r}")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ProfileError(file, "metadata", f"must be an object, got {type(metadata).__name__}")
    return Profile(pipeline=name, points=points, metadata=metadata,
                   fanout={k: float(v) for k, v in fanout.items()}, schema_version=version)


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    return {
        "schema_version": profile.schema_version,
        "pipeline": profile.pipeline,
        "metadata": dict(profile.metadata),
        "fanout": dict(profile.fanout),
        "points": [p.to_dict() for p in profile.points],
    }


def load_profile(path: str | Path, pipeline: str | None = None) -> Profile:
    """Read a profile store file; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(str(path), "(file)", f"cannot read: {e.strerror or e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(str(path), f"(line {e.lineno})", f"not valid JSON: {e.msg}") from e
    return profile_from_dict(data, str(path), pipeline)


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write atomically (temp file + rename) so an interrupted run never leaves half a file."""
    write_json_atomic(path, profile_to_dict(profile), indent=1)
