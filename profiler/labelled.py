"""The flagship's labelled evaluation set: typed records and the loader (profiler/EVAL_SET.md).

``profiler/evalset/labels.json`` (format: EVALSET_FORMAT in EVAL_SET.md) ships as
package data of ``varipipe.profiler``; ``load_labelled_set()`` reads it through
``importlib.resources`` and validates every field, naming the item and field of
anything wrong. Labels use COCO's own spelling ("dining table", "couch", "tv");
``coco_label`` maps darknet's spellings ("diningtable", "sofa", "tvmonitor", ...),
which the YOLOv3/v4 detectors' ``coco.names`` use, to COCO's, so detections and
ground truth compare by one name.

Decoding a photo (``read_image``) is the only other I/O here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from varipipe.errors import ConfigError

__all__ = [
    "Box",
    "GroundTruthBox",
    "LabelledItem",
    "SplitRule",
    "LabelledSet",
    "SPLITS",
    "DARKNET_TO_COCO",
    "coco_label",
    "coco_classes",
    "default_root",
    "load_labelled_set",
    "parse_labelled_set",
    "read_image",
]

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the shipped photo
SPLITS = ("dev", "test")
SCHEMA = 1
LABELS_FILE = "labels.json"
CLASSES_FILE = "coco_classes.txt"
# darknet's coco.names spells six COCO classes its own way (PASCAL VOC's names).
DARKNET_TO_COCO: Mapping[str, str] = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}
_ID = re.compile(r"^[a-z0-9-]+$")


def coco_label(name: str) -> str:
    """COCO's spelling of a class name (darknet's six differing spellings mapped; others as they are)."""
    return DARKNET_TO_COCO.get(name, name)


@dataclass(frozen=True)
class GroundTruthBox:
    """One labelled object; ``crowd`` marks an inseparable group (ignored in matching, as COCO's iscrowd)."""

    label: str
    box: Box
    crowd: bool = False

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


@dataclass(frozen=True)
class LabelledItem:
    """One photo with its ground truth; ``second`` is the independent second labelling, where there is one."""

    id: str
    file: str
    width: int
    height: int
    split: str
    boxes: tuple[GroundTruthBox, ...]
    source: str = ""
    licence: str = ""
    labeller: str = ""
    second: tuple[GroundTruthBox, ...] | None = None
    second_labeller: str = ""


@dataclass(frozen=True)
class SplitRule:
    """How the dev/test split was made (fixed before anything was measured)."""

    rule: str
    seed: int
    dev_fraction: float


@dataclass(frozen=True)
class LabelledSet:
    """The whole set; ``root`` is the folder (a path or an importlib Traversable) holding ``images/``."""

    items: tuple[LabelledItem, ...]
    classes: tuple[str, ...]
    split_rule: SplitRule
    root: Any = None
    file: str = ""

    def split(self, name: str) -> tuple[LabelledItem, ...]:
        """The items of one split ("dev" or "test"), in file order."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return tuple(i for i in self.items if i.split == name)

    def item(self, item_id: str) -> LabelledItem:
        for i in self.items:
            if i.id == item_id:
                return i
        raise KeyError(f"no item {item_id!r} in {self.file or 'the labelled set'}")


def default_root() -> Any:
    """The shipped set's folder inside the installed package (``varipipe.profiler/evalset``)."""
    return resources.files("varipipe.profiler") / "evalset"


def _as_root(root: Any) -> Any:
    if root is None:
        return default_root()
    return Path(root) if isinstance(root, str) else root


def coco_classes(root: Any = None) -> tuple[str, ...]:
    """COCO's 80 class names in COCO's spelling and order, from ``evalset/coco_classes.txt``."""
    text = (_as_root(root) / CLASSES_FILE).read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 80 or len(set(names)) != 80:
        raise ConfigError(CLASSES_FILE, "(file)", f"expected 80 unique class names, got {len(names)}")
    return names


def load_labelled_set(root: Any = None) -> LabelledSet:
    """Read and validate ``labels.json`` from ``root`` (default: the shipped set)."""
    root = _as_root(root)
    path = root / LABELS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ConfigError(str(path), "(file)", "no labels.json: the labelled set is not installed here "
                          "(profiler/EVAL_SET.md)") from e
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), "(syntax)", f"not valid JSON: {e}") from e
    return parse_labelled_set(data, coco_classes(root), root=root, file=str(path))


def _fail(file: str, where: str, problem: str) -> ConfigError:
    return ConfigError(file, where, problem)


def _box(raw: Any, classes: frozenset[str], file: str, where: str) -> GroundTruthBox:
    if not isinstance(raw, dict):
        raise _fail(file, where, f"expected an object with label, box, crowd; got {type(raw).__name__}")
    label = raw.get("label")
    if not isinstance(label, str) or coco_label(label) not in classes:
        raise _fail(file, f"{where}.label", f"{label!r} is not one of COCO's 80 classes ({CLASSES_FILE})")
    box = raw.get("box")
    if (not isinstance(box, list) or len(box) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)):
        raise _fail(file, f"{where}.box", f"expected [x1, y1, x2, y2] numbers, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise _fail(file, f"{where}.box", f"needs x2 > x1 and y2 > y1, got {box!r}")
    crowd = raw.get("crowd", False)
    if not isinstance(crowd, bool):
        raise _fail(file, f"{where}.crowd", f"expected true or false, got {crowd!r}")
    return GroundTruthBox(coco_label(label), (x1, y1, x2, y2), crowd)


def _boxes(raw: Any, classes: frozenset[str], file: str, where: str) -> tuple[GroundTruthBox, ...]:
    if not isinstance(raw, list):
        raise _fail(file, where, f"expected a list of boxes, got {type(raw).__name__}")
    return tuple(_box(b, classes, file, f"{where}[{k}]") for k, b in enumerate(raw))


def _int(raw: Mapping[str, Any], key: str, file: str, where: str) -> int:
    v = raw.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise _fail(file, f"{where}.{key}", f"expected a positive integer, got {v!r}")
    return v


def _item(raw: Any, classes: frozenset[str], file: str, i: int) -> LabelledItem:
    where = f"items[{i}]"
    if not isinstance(raw, dict):
        raise _fail(file, where, f"expected an object, got {type(raw).__name__}")
    item_id = raw.get("id")
    if not isinstance(item_id, str) or not _ID.match(item_id):
        raise _fail(file, f"{where}.id", f"expected [a-z0-9-]+, got {item_id!r}")
    where = f"items[{i}]({item_id})"
    split = raw.get("split")
    if split not in SPLITS:
        raise _fail(file, f"{where}.split", f"expected one of {SPLITS}, got {split!r}")
    second = raw.get("second")
    if second is not None and not isinstance(second, dict):
        raise _fail(file, f"{where}.second", f"expected an object with labeller and boxes, got {second!r}")
    width, height = _int(raw, "width", file, where), _int(raw, "height", file, where)
    boxes = _boxes(raw.get("boxes"), classes, file, f"{where}.boxes")
    for k, b in enumerate(boxes):
        if b.box[0] < 0 or b.box[1] < 0 or b.box[2] > width or b.box[3] > height:
            raise _fail(file, f"{where}.boxes[{k}].box", f"{list(b.box)} is outside the {width}x{height} photo")
    return LabelledItem(
        id=item_id, file=str(raw.get("file") or f"images/{item_id}.jpg"), width=width, height=height,
        split=split, boxes=boxes, source=str(raw.get("source", "")), licence=str(raw.get("licence", "")),
        labeller=str(raw.get("labeller", "")),
        second=_boxes(second.get("boxes"), classes, file, f"{where}.second.boxes") if second else None,
        second_labeller=str(second.get("labeller", "")) if second else "",
    )


def parse_labelled_set(data: Any, classes: Sequence[str], root: Any = None, file: str = "<labels>") -> LabelledSet:
    """Validate a parsed ``labels.json`` document into a ``LabelledSet``."""
    if not isinstance(data, dict):
        raise _fail(file, "(top level)", f"expected an object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise _fail(file, "schema", f"expected {SCHEMA}, got {data.get('schema')!r}")
    split = data.get("split")
    if not isinstance(split, dict):
        raise _fail(file, "split", f"expected an object with rule, seed, dev_fraction; got {split!r}")
    rule = SplitRule(str(split.get("rule", "")), int(split.get("seed", 0)), float(split.get("dev_fraction", 0.0)))
    raw_items = data.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise _fail(file, "items", "expected a non-empty list of items")
    known = frozenset(classes)
    items = tuple(_item(raw, known, file, i) for i, raw in enumerate(raw_items))
    ids = [i.id for i in items]
    if len(set(ids)) != len(ids):
        dup = sorted({x for x in ids if ids.count(x) > 1})
        raise _fail(file, "items", f"ids repeat: {dup}")
    return LabelledSet(items, tuple(classes), rule, root, file)


def read_image(labelled: LabelledSet, item: LabelledItem) -> np.ndarray:
    """The item's photo as HxWx3 uint8 RGB, decoded as the HTTP ingress decodes an upload."""
    from varipipe.pipelines.images import decode_image

    rgb = decode_image((_as_root(labelled.root) / item.file).read_bytes())
    if rgb.shape[:2] != (item.height, item.width):
        raise ConfigError(labelled.file, f"item {item.id}", f"labels say {item.width}x{item.height} but "
                          f"{item.file} is {rgb.shape[1]}x{rgb.shape[0]}")
    return rgb
