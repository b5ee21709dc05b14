"""The recorded ImageNet-1k -> COCO label mapping used to score classifiers on COCO boxes.

``profiler/data/imagenet1k_to_coco.json`` lists, per COCO class, the ImageNet
class indices that map to it, with the rule, how it was made and the
published mapping it was checked against (profiler/EVAL_SET.md). Loading is
the only I/O; ``LabelMapping`` is a plain record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from varipipe.errors import ConfigError

__all__ = ["LabelMapping", "load_label_mapping", "parse_label_mapping", "MAPPING_FILE", "IMAGENET_CLASSES"]

MAPPING_FILE = "data/imagenet1k_to_coco.json"
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class LabelMapping:
    """ImageNet index -> COCO class for the covered COCO classes."""

    to_coco: Mapping[int, str]
    covered: frozenset[str]
    rule: str = ""
    file: str = ""

    def coco_of(self, imagenet_index: int) -> str | None:
        """The COCO class an ImageNet class maps to; None for one that maps to none."""
        return self.to_coco.get(imagenet_index)

    def correct(self, imagenet_index: int, coco_class: str) -> bool:
        return self.to_coco.get(imagenet_index) == coco_class


def parse_label_mapping(data: Any, file: str = "<mapping>") -> LabelMapping:
    """Validate the mapping document: known indices, each mapped at most once, ``covered`` as listed."""
    classes = data.get("classes") if isinstance(data, dict) else None
    if not isinstance(classes, dict) or not classes:
        raise ConfigError(file, "classes", "expected an object of COCO class -> {imagenet: [...]}")
    to_coco: dict[int, str] = {}
    for coco, entry in classes.items():
        indices = entry.get("imagenet") if isinstance(entry, dict) else None
        if not isinstance(indices, list):
            raise ConfigError(file, f"classes.{coco}.imagenet", f"expected a list of indices, got {indices!r}")
        for i in indices:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < IMAGENET_CLASSES:
                raise ConfigError(file, f"classes.{coco}.imagenet", f"{i!r} is not an ImageNet-1k index (0-999)")
            if i in to_coco:
                raise ConfigError(file, f"classes.{coco}.imagenet", f"{i} is already mapped to {to_coco[i]!r}")
            to_coco[i] = coco
    covered = frozenset(to_coco.values())
    if data.get("covered") != len(covered):
        raise ConfigError(file, "covered", f"says {data.get('covered')!r} but {len(covered)} classes have indices")
    return LabelMapping(to_coco, covered, str(data.get("rule", "")), file)


def load_label_mapping() -> LabelMapping:
    """The shipped mapping (package data of ``varipipe.profiler``)."""
    path = resources.files("varipipe.profiler") / MAPPING_FILE
    return parse_label_mapping(json.loads(path.read_text(encoding="utf-8")), f"profiler/{MAPPING_FILE}")
