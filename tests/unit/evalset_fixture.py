"""A small synthetic labelled set in labels.json's format (profiler/EVAL_SET.md), written to a folder.

Plain coloured photos (no real objects): the tests drive the loader, the metrics and the
evaluation set's plumbing with them, never a model's accuracy.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

# id -> (split, width, height, boxes); boxes: (label, [x1, y1, x2, y2], crowd)
ITEMS = {
    "kitchen-a": ("test", 64, 48, [("cup", [4, 4, 30, 30], False), ("diningtable", [0, 20, 64, 48], False)]),
    "street-b": ("test", 80, 60, [("person", [10, 5, 30, 55], False), ("person", [40, 0, 80, 40], True),
                                  ("car", [50, 30, 78, 58], False)]),
    "pets-c": ("test", 60, 60, [("cat", [2, 2, 40, 40], False), ("dog", [30, 20, 58, 58], False)]),
    "park-d": ("dev", 70, 50, [("bench", [5, 25, 60, 48], False), ("bird", [20, 2, 34, 14], False)]),
}


def coco_names() -> str:
    return (resources.files("varipipe.profiler") / "evalset" / "coco_classes.txt").read_text(encoding="utf-8")


def labels_document(items=ITEMS) -> dict:
    return {
        "schema": 1, "classes": "coco-80",
        "split": {"rule": "synthetic fixture", "seed": 17, "dev_fraction": 0.25},
        "items": [{"id": i, "file": f"images/{i}.jpg", "width": w, "height": h, "split": split,
                   "source": "synthetic", "licence": "CC0", "labeller": "T",
                   "boxes": [{"label": lab, "box": box, "crowd": crowd} for lab, box, crowd in boxes]}
                  for i, (split, w, h, boxes) in items.items()],
    }


def write_set(folder: Path, items=ITEMS) -> Path:
    """labels.json, coco_classes.txt and one flat-colour JPEG per item in ``folder``."""
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "coco_classes.txt").write_text(coco_names(), encoding="utf-8")
    (folder / "labels.json").write_text(json.dumps(labels_document(items)), encoding="utf-8")
    for k, (i, (_, w, h, _)) in enumerate(items.items()):
        pixels = np.full((h, w, 3), (40 * k, 120, 200), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.jpg", quality=90)
    return folder

