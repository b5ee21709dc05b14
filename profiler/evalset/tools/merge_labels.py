"""Merge the labellers' files into ``labels.json``, split dev/test, and measure double-label agreement.

Run once by the lead after labelling (not by the project or the tests):

    python profiler/evalset/tools/merge_labels.py

The first labelling of a photo (``assignment.json`` ``first``) is the ground
truth; the blind second one (``second``) is kept beside it for the agreement
figures. The split is drawn here, from the labels only (no model has seen the
photos), and never changed afterwards.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parents[1]
TOOLS = HERE / "tools"
# Fixed before the split was drawn; the split is part of the set from then on.
SPLIT_SEED = 17
DEV_FRACTION = 1 / 3
# Photos that the detector's regression test (issue 17) looks at by name: choices made on
# them are choices, so they sit in dev.
FORCED_DEV = ("skimage-astronaut", "skimage-chelsea", "skimage-coffee")
# Strata by how busy a photo is (non-crowd boxes): close-ups, small groups, scenes.
STRATA = ((1, 1), (2, 4), (5, 10_000))
IOU_MATCH = 0.5


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match(ref: list[dict], other: list[dict]) -> list[float]:
    """IoUs of ``ref``'s non-crowd boxes greedily matched (best IoU first) to same-class boxes of ``other``."""
    pairs = sorted(((_iou(r["box"], o["box"]), i, j) for i, r in enumerate(ref) for j, o in enumerate(other)
                    if r["label"] == o["label"] and not r.get("crowd") and not o.get("crowd")), reverse=True)
    used_r, used_o, ious = set(), set(), []
    for v, i, j in pairs:
        if v >= IOU_MATCH and i not in used_r and j not in used_o:
            used_r.add(i)
            used_o.add(j)
            ious.append(v)
    return ious


def agreement(first: dict[str, list[dict]], second: dict[str, list[dict]]) -> dict:
    n1 = sum(1 for k in second for b in first[k] if not b.get("crowd"))
    n2 = sum(1 for k in second for b in second[k] if not b.get("crowd"))
    ious = [v for k in second for v in _match(first[k], second[k])]
    per_photo = {k: {"first": len([b for b in first[k] if not b.get("crowd")]),
                     "second": len([b for b in second[k] if not b.get("crowd")]),
                     "matched": len(_match(first[k], second[k]))} for k in sorted(second)}
    return {"photos": len(second), "boxes_first": n1, "boxes_second": n2, "matched": len(ious),
            "first_matched_fraction": len(ious) / n1, "second_matched_fraction": len(ious) / n2,
            "mean_iou_matched": sum(ious) / len(ious), "iou_threshold": IOU_MATCH, "per_photo": per_photo}


def split(labels: dict[str, list[dict]]) -> dict[str, str]:
    rng = random.Random(SPLIT_SEED)
    out = {k: "dev" for k in FORCED_DEV}
    for lo, hi in STRATA:
        ids = sorted(k for k, boxes in labels.items()
                     if lo <= sum(1 for b in boxes if not b.get("crowd")) <= hi)
        forced = [k for k in ids if k in out]
        rest = [k for k in ids if k not in out]
        rng.shuffle(rest)
        n_dev = max(0, round(len(ids) * DEV_FRACTION) - len(forced))
        out.update({k: ("dev" if i < n_dev else "test") for i, k in enumerate(rest)})
    return out


def main() -> int:
    assignment = json.loads((TOOLS / "assignment.json").read_text())
    sources = {s["id"]: s for s in json.loads((HERE / "sources.json").read_text())}
    files = {who: json.loads((TOOLS / f"labels-{who}.json").read_text()) for who in assignment["first"]}
    first = {k: files[who][k] for who, ids in assignment["first"].items() for k in ids}
    firsts_by = {k: who for who, ids in assignment["first"].items() for k in ids}
    second = {k: files[who][k] for who, ids in assignment["second"].items() for k in ids}
    seconds_by = {k: who for who, ids in assignment["second"].items() for k in ids}
    missing = sorted(set(sources) - set(first))
    if missing:
        raise SystemExit(f"no first labelling for {missing}")
    parts = split(first)
    items = []
    for k in sorted(sources):
        w, h = Image.open(HERE / "images" / f"{k}.jpg").size
        s = sources[k]
        item = {"id": k, "file": f"images/{k}.jpg", "width": w, "height": h, "split": parts[k],
                "source": f"{s['source']}: {s['path']}", "licence": s["licence"], "labeller": firsts_by[k],
                "boxes": [{"label": b["label"], "box": [int(v) for v in b["box"]], "crowd": bool(b.get("crowd"))}
                          for b in first[k]]}
        if k in second:
            item["second"] = {"labeller": seconds_by[k],
                              "boxes": [{"label": b["label"], "box": [int(v) for v in b["box"]],
                                         "crowd": bool(b.get("crowd"))} for b in second[k]]}
        items.append(item)
    doc = {"schema": 1, "classes": "coco-80",
           "split": {"rule": "stratified by non-crowd boxes per photo (1 / 2-4 / 5+), seeded shuffle, a third "
                             f"of each stratum to dev; {', '.join(FORCED_DEV)} forced to dev (the detector's "
                             "regression test looks at them)", "seed": SPLIT_SEED, "dev_fraction": DEV_FRACTION},
           "items": items}
    (HERE / "labels.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    agree = agreement(first, second)
    (TOOLS / "agreement.json").write_text(json.dumps(agree, indent=1) + "\n", encoding="utf-8")
    n_dev = sum(1 for i in items if i["split"] == "dev")
    print(f"{len(items)} photos ({n_dev} dev, {len(items) - n_dev} test), "
          f"{sum(len(i['boxes']) for i in items)} boxes")
    print(json.dumps({k: v for k, v in agree.items() if k != "per_photo"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
