"""The labelled set's loader: records, COCO spellings, validation that names the item and field."""

from __future__ import annotations

import json

import pytest

from varipipe.errors import ConfigError
from varipipe.profiler.labelled import (
    DARKNET_TO_COCO,
    coco_classes,
    coco_label,
    load_labelled_set,
    parse_labelled_set,
    read_image,
)

from .evalset_fixture import labels_document, write_set


def test_loads_items_boxes_and_splits(tmp_path):
    s = load_labelled_set(write_set(tmp_path))
    assert [i.id for i in s.split("test")] == ["kitchen-a", "street-b", "pets-c"]
    assert [i.id for i in s.split("dev")] == ["park-d"]
    street = s.item("street-b")
    assert [(b.label, b.crowd) for b in street.boxes] == [("person", False), ("person", True), ("car", False)]
    assert s.split_rule.seed == 17 and len(s.classes) == 80
    img = read_image(s, street)
    assert img.shape == (60, 80, 3) and img.dtype.name == "uint8"
    with pytest.raises(ValueError, match="split must be one of"):
        s.split("train")


def test_darknet_spellings_become_cocos():
    names = set(coco_classes())
    assert all(coco in names and darknet not in names for darknet, coco in DARKNET_TO_COCO.items())
    assert coco_label("diningtable") == "dining table" and coco_label("tvmonitor") == "tv"
    assert coco_label("person") == "person"


def test_the_fixture_label_diningtable_is_read_as_dining_table(tmp_path):
    s = load_labelled_set(write_set(tmp_path))
    assert s.item("kitchen-a").boxes[1].label == "dining table"


@pytest.mark.parametrize("change,field,message", [
    (lambda d: d["items"][0]["boxes"][0].update(label="lemon"), "items[0](kitchen-a).boxes[0].label",
     "not one of COCO's 80 classes"),
    (lambda d: d["items"][0]["boxes"][0].update(box=[10, 10, 5, 20]), "items[0](kitchen-a).boxes[0].box",
     "x2 > x1"),
    (lambda d: d["items"][0]["boxes"][0].update(box=[0, 0, 65, 10]), "items[0](kitchen-a).boxes[0].box",
     "outside the 64x48 photo"),
    (lambda d: d["items"][1].update(split="train"), "items[1](street-b).split", "expected one of"),
    (lambda d: d["items"][2].update(id="kitchen-a"), "items", "ids repeat"),
    (lambda d: d["items"][2].update(id="Pets C"), "items[2].id", "[a-z0-9-]+"),
    (lambda d: d.update(schema=2), "schema", "expected 1"),
    (lambda d: d["items"][0]["boxes"][0].update(crowd="yes"), "items[0](kitchen-a).boxes[0].crowd", "true or false"),
])
def test_bad_labels_name_the_item_and_field(change, field, message):
    doc = labels_document()
    change(doc)
    with pytest.raises(ConfigError) as e:
        parse_labelled_set(json.loads(json.dumps(doc)), coco_classes(), file="labels.json")
    assert e.value.field == field and message in e.value.problem


def test_a_missing_labels_file_says_the_set_is_not_installed(tmp_path):
    write_set(tmp_path)
    (tmp_path / "labels.json").unlink()
    with pytest.raises(ConfigError, match="not installed here"):
        load_labelled_set(tmp_path)


def test_second_labellings_are_kept(tmp_path):
    doc = labels_document()
    doc["items"][0]["second"] = {"labeller": "B", "boxes": [{"label": "cup", "box": [5, 5, 30, 31], "crowd": False}]}
    s = parse_labelled_set(doc, coco_classes())
    assert s.items[0].second_labeller == "B" and s.items[0].second[0].label == "cup"


def test_a_photo_whose_size_differs_from_its_labels_is_refused(tmp_path):
    from PIL import Image

    s = load_labelled_set(write_set(tmp_path))
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "pets-c.jpg", quality=90)
    with pytest.raises(ConfigError, match="labels say 60x60 but images/pets-c.jpg is 32x32"):
        read_image(s, s.item("pets-c"))


def test_the_shipped_set_loads_every_photo_at_its_labelled_size():
    s = load_labelled_set()
    dev, test = s.split("dev"), s.split("test")
    assert dev and test and len(dev) + len(test) == len(s.items)
    longest_side = 640  # EVALSET_FORMAT: re-encoded with the longest side <= 640 px
    for item in s.items:
        img = read_image(s, item)  # raises when the file's size is not the labelled one
        assert max(img.shape[:2]) <= longest_side and all(b.label in s.classes for b in item.boxes)
    # issue 17 item 2: at least 10 % of the items labelled twice
    assert sum(i.second is not None for i in s.items) >= 0.1 * len(s.items)
