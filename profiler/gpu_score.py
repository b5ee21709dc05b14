"""Give a GPU profile's unscored points the CPU figure that now exists for their variants.

``gpu_profile`` measures every carried variant, but a point needs an accuracy figure and
accuracy does not depend on the hardware: a variant the CPU profile had no figure for when
the carry was made (a new detector rung, say) has its GPU points kept in
``metadata.unscored``, each with the note its ``accuracy_source`` will carry
(``metadata.accuracy_note``). Once the CPU profile has the figure, this moves those points
into the profile with it (``gpu_profile.scored_point``: the same fields a run writes) and
refits the latency model. Points whose variant still has no figure stay where they are.

    python -m varipipe.profiler.gpu_score RESULT [--cpu-profile PROFILE] [--out PROFILE]

RESULT: the GPU run's profile JSON, or its ``<name>.metadata.json`` (written while it had no
scored point). Default output: the profile beside RESULT (RESULT itself when it is the profile).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varipipe.profiler.gpu_inputs import cpu_figures
from varipipe.profiler.gpu_profile import scored_point, write_results
from varipipe.profiler.store import load_profile
from varipipe.records import Accuracy, ProfilePoint

__all__ = ["Scored", "score", "read_result", "main"]

METADATA_SUFFIX = ".metadata.json"  # gpu_profile.metadata_only_path


@dataclass(frozen=True)
class Scored:
    """What ``score`` did: the profile's points after it, the metadata, how many it moved."""

    points: tuple[ProfilePoint, ...]
    metadata: dict[str, Any]
    moved: int
    left: int


def read_result(path: Path) -> tuple[str, list[ProfilePoint], dict[str, Any], Path]:
    """(pipeline, scored points, metadata, the profile's path) of a GPU run's result file."""
    if path.name.endswith(METADATA_SUFFIX):
        doc = json.loads(path.read_text(encoding="utf-8"))
        return doc["pipeline"], [], dict(doc["metadata"]), path.with_name(path.name[:-len(METADATA_SUFFIX)] + ".json")
    prof = load_profile(path)
    return prof.pipeline, list(prof.points), dict(prof.metadata), path


def score(points: Sequence[ProfilePoint], metadata: dict[str, Any],
          figures: dict[tuple[str, str], Accuracy], source: str) -> Scored:
    """Move every unscored point whose (stage, variant) has a figure into the points."""
    moved, kept = list(points), []
    for raw in metadata.get("unscored", []):
        figure = figures.get((raw["stage"], raw["variant"]))
        if figure is None:
            kept.append(raw)
            continue
        note = metadata["accuracy_note"][f"{raw['stage']}/{raw['variant']}"]
        measured = {k: v for k, v in raw.items() if not k.startswith("accuracy")}
        moved.append(scored_point(measured, figure, note))
    meta = {**metadata, "unscored": kept}
    if len(moved) > len(points):
        meta["scored_later"] = [*metadata.get("scored_later", []),
                                {"points": len(moved) - len(points), "figures_from": source}]
    return Scored(tuple(moved), meta, len(moved) - len(points), len(kept))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varipipe.profiler.gpu_score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", help="the GPU run's profile JSON or its .metadata.json")
    parser.add_argument("--cpu-profile", default=None,
                        help="CPU profile with the figures (default: the pipeline's shipped profile)")
    parser.add_argument("--out", default=None, help="profile to write (default: beside RESULT)")
    args = parser.parse_args(argv)
    result = Path(args.result)
    if not result.exists():
        print(f"error: no such file: {result}", file=sys.stderr)
        return 2
    pipeline, points, metadata, profile_path = read_result(result)
    figures, source = cpu_figures(pipeline, Path(args.cpu_profile) if args.cpu_profile else None)
    done = score(points, metadata, figures, source)
    written = write_results(Path(args.out) if args.out else profile_path, pipeline, done.points, done.metadata)
    print(f"{done.moved} points scored from {source}, {done.left} still without a figure; wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
