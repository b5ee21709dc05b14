"""The recorded ImageNet-1k -> COCO mapping: consistent with the class lists it names, and its rule enforced."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from varipipe.errors import ConfigError
from varipipe.profiler.label_mapping import MAPPING_FILE, load_label_mapping, parse_label_mapping
from varipipe.profiler.labelled import coco_classes


def _doc() -> dict:
    return json.loads((resources.files("varipipe.profiler") / MAPPING_FILE).read_text(encoding="utf-8"))


def _imagenet_names() -> list[str]:
    path = resources.files("varipipe.pipelines.variants") / "data" / "imagenet1k_clean_names.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_coco_class_is_listed_once_and_62_are_covered():
    doc = _doc()
    assert list(doc["classes"]) == list(coco_classes())
    m = load_label_mapping()
    assert len(m.covered) == doc["covered"] == 62
    assert sorted(set(coco_classes()) - m.covered) == sorted(doc["not_covered"])
    assert all(doc["classes"][c]["note"] for c in coco_classes())  # every class says why


def test_names_shown_for_review_are_the_classifiers_names_at_those_indices():
    names = _imagenet_names()
    for coco, entry in _doc()["classes"].items():
        assert entry["names"] == [names[i] for i in entry["imagenet"]], coco


def test_spot_checks_of_the_rule():
    m = load_label_mapping()
    names = _imagenet_names()
    index = {n: i for i, n in enumerate(names)}
    assert m.coco_of(index["tabby cat"]) == "cat" and m.coco_of(index["cougar"]) is None
    assert m.coco_of(index["Golden Retriever"]) == "dog" and m.coco_of(index["grey wolf"]) is None
    assert m.coco_of(index["coffee mug"]) == "cup" and m.coco_of(index["beer glass"]) is None
    assert m.coco_of(index["minivan"]) == "car" and m.coco_of(index["pickup truck"]) == "truck"
    assert m.coco_of(index["car wheel"]) is None and m.coco_of(index["traffic or street sign"]) is None
    assert m.correct(index["giant panda"], "bear") and not m.correct(index["giant panda"], "cat")


@pytest.mark.parametrize("change,message", [
    (lambda d: d["classes"]["cat"]["imagenet"].append(1000), "not an ImageNet-1k index"),
    (lambda d: d["classes"]["dog"]["imagenet"].append(281), "already mapped to 'cat'"),
    (lambda d: d.update(covered=61), "says 61"),
])
def test_a_broken_mapping_file_is_refused(change, message):
    doc = _doc()
    change(doc)
    with pytest.raises(ConfigError, match=message):
        parse_label_mapping(doc)
