"""COCO-style mAP@0.5: hand-checked cases, and equality with pycocotools on random sets.

The random sets (200 of them, seeded) have 1-12 images, 1-5 classes, crowd boxes
(about 15 %), jittered hits, wrong-class copies and background false positives;
their mAP spans 0 to 1 and about 400 detections land on crowd boxes.
"""

from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import pytest

from varipipe.profiler.detection_map import (
    MAX_DETECTIONS,
    MatchTable,
    Scored,
    Truth,
    accumulate,
    box_iou,
    match_image,
    mean_average_precision,
)


def test_perfect_detections_score_one_and_missing_ones_lower_recall():
    truths = [[Truth("cat", (0, 0, 10, 10)), Truth("dog", (20, 20, 40, 40))], [Truth("cat", (5, 5, 50, 50))]]
    perfect = [[Scored(t.label, t.box, 0.9) for t in img] for img in truths]
    assert mean_average_precision(perfect, truths).value == pytest.approx(1.0)
    half = [[Scored("cat", (0, 0, 10, 10), 0.9)], []]  # one cat of two, no dog
    result = mean_average_precision(half, truths)
    # cat: recall reaches 0.5 at precision 1 -> 51 of 101 recall points; dog: nothing found
    assert result.per_class == {"cat": pytest.approx(51 / 101), "dog": 0.0}
    assert result.value == pytest.approx(51 / 202)
    assert result.truths == 3 and result.images == 2


def test_a_false_positive_ranked_first_costs_precision_and_classes_without_truth_are_not_averaged():
    truths = [[Truth("cat", (0, 0, 10, 10))]]
    dets = [[Scored("cat", (50, 50, 60, 60), 0.95), Scored("cat", (0, 0, 10, 10), 0.9),
             Scored("bus", (0, 0, 5, 5), 0.99)]]
    result = mean_average_precision(dets, truths)
    assert result.per_class == {"cat": pytest.approx(0.5)}  # TP at rank 2: precision 1/2 at recall 1
    assert result.value == pytest.approx(0.5)


def test_a_detection_on_a_crowd_box_is_neither_right_nor_wrong():
    truths = [[Truth("person", (0, 0, 100, 100), crowd=True), Truth("person", (200, 0, 220, 40))]]
    dets = [[Scored("person", (10, 10, 30, 30), 0.99), Scored("person", (40, 40, 60, 60), 0.98),
             Scored("person", (200, 0, 220, 40), 0.5)]]
    m = match_image(dets[0], truths[0]).by_class["person"]
    assert m.ignored == (True, True, False) and m.matched == (True, True, True) and m.n_truth == 1
    assert mean_average_precision(dets, truths).value == pytest.approx(1.0)


def test_crowd_only_classes_are_not_averaged_and_crowd_iou_is_over_the_detection():
    assert box_iou((10, 10, 20, 20), (0, 0, 100, 100), crowd=True) == pytest.approx(1.0)
    assert box_iou((10, 10, 20, 20), (0, 0, 100, 100)) == pytest.approx(0.01)
    result = mean_average_precision([[Scored("bird", (0, 0, 5, 5), 0.9)]], [[Truth("bird", (0, 0, 50, 50), True)]])
    assert result.per_class == {} and result.value == 0.0


def test_at_most_100_detections_per_image_the_most_confident_across_classes():
    truths = [[Truth("cup", (0, 0, 10, 10))]]
    noise = [Scored("bowl", (50, 50, 60, 60), 0.9) for _ in range(MAX_DETECTIONS)]
    found = Scored("cup", (0, 0, 10, 10), 0.5)
    assert mean_average_precision([[*noise, found]], truths).value == 0.0  # the cup is the 101st
    assert mean_average_precision([[*noise[:-1], found]], truths).value == pytest.approx(1.0)


def test_bootstrap_repeats_count_as_separate_images():
    m = match_image([Scored("cat", (0, 0, 10, 10), 0.9)], [Truth("cat", (0, 0, 10, 10)), Truth("cat", (30, 0, 40, 10))])
    once, twice = accumulate([m]), accumulate([m, m])
    assert once.truths == 2 and twice.truths == 4
    assert once.value == pytest.approx(twice.value)


# --- against pycocotools -----------------------------------------------------------------------

def _random_set(rng: random.Random) -> tuple[list[list[Scored]], list[list[Truth]]]:
    classes = ["cat", "dog", "cup", "person", "tv"][: rng.randint(1, 5)]
    dets, truths = [], []
    for _ in range(rng.randint(1, 12)):
        img_t: list[Truth] = []
        for _ in range(rng.randint(0, 6)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 400)
            img_t.append(Truth(rng.choice(classes), (x, y, x + rng.uniform(5, 200), y + rng.uniform(5, 200)),
                               crowd=rng.random() < 0.15))
        img_d: list[Scored] = []
        for t in img_t:  # near-misses and hits: jittered copies of the truth, sometimes the wrong class
            for _ in range(rng.choice([0, 1, 1, 2])):
                w, h = t.box[2] - t.box[0], t.box[3] - t.box[1]
                jx, jy = rng.gauss(0, 0.2 * w), rng.gauss(0, 0.2 * h)
                label = t.label if rng.random() < 0.85 else rng.choice(classes)
                img_d.append(Scored(label, (t.box[0] + jx, t.box[1] + jy, t.box[2] + jx * rng.uniform(0.5, 1.5),
                                            t.box[3] + jy * rng.uniform(0.5, 1.5)), rng.random()))
        for _ in range(rng.randint(0, 4)):  # background false positives
            x, y = rng.uniform(0, 500), rng.uniform(0, 400)
            img_d.append(Scored(rng.choice(classes), (x, y, x + rng.uniform(5, 150), y + rng.uniform(5, 150)),
                                rng.random()))
        dets.append([d for d in img_d if d.box[2] > d.box[0] and d.box[3] > d.box[1]])
        truths.append(img_t)
    return dets, truths


def _xywh(box):
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _pycocotools_ap50(dets, truths) -> tuple[float, dict[str, float]]:
    from pycocotools.coco import COCO  # the reference implementation (dev extra)
    from pycocotools.cocoeval import COCOeval

    names = sorted({t.label for img in truths for t in img} | {d.label for img in dets for d in img})
    cat = {n: k + 1 for k, n in enumerate(names)}
    anns = [{"id": k + 1, "image_id": i + 1, "category_id": cat[t.label], "bbox": _xywh(t.box),
             "area": (t.box[2] - t.box[0]) * (t.box[3] - t.box[1]), "iscrowd": int(t.crowd)}
            for k, (i, t) in enumerate((i, t) for i, img in enumerate(truths) for t in img)]
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1} for i in range(len(truths))], "annotations": anns,
                  "categories": [{"id": k, "name": n} for n, k in cat.items()]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes([{"image_id": i + 1, "category_id": cat[d.label], "bbox": _xywh(d.box), "score": d.score}
                         for i, img in enumerate(dets) for d in img])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][0, :, :, 0, 2]  # IoU 0.5, all recall points, every class, area all, 100 dets
    per_class = {n: float(np.mean(prec[:, k - 1])) for n, k in cat.items() if (prec[:, k - 1] > -1).all()}
    valid = prec[prec > -1]
    return (float(np.mean(valid)) if valid.size else 0.0), per_class


@pytest.mark.parametrize("seed", range(40))
def test_equal_to_pycocotools_on_random_sets(seed):
    rng = random.Random(seed)
    for _ in range(5):
        dets, truths = _random_set(rng)
        if not any(dets):
            continue  # pycocotools' loadRes cannot take an empty result list
        ours = mean_average_precision(dets, truths)
        value, per_class = _pycocotools_ap50(dets, truths)
        assert ours.value == pytest.approx(value, abs=1e-6)
        assert ours.per_class.keys() == per_class.keys()
        for c, ap in per_class.items():
            assert ours.per_class[c] == pytest.approx(ap, abs=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_the_bootstrap_table_equals_accumulate_on_the_repeated_list(seed):
    rng = random.Random(100 + seed)
    dets, truths = _random_set(rng)
    images = [match_image(d, t) for d, t in zip(dets, truths, strict=True)]
    table = MatchTable(images)
    assert table.map_value(np.ones(len(images), dtype=int)) == accumulate(images).value
    nrng = np.random.default_rng(seed)
    for _ in range(5):
        idx = nrng.integers(0, len(images), size=len(images))
        counts = np.bincount(idx, minlength=len(images))
        assert table.map_value(counts) == pytest.approx(accumulate([images[i] for i in idx]).value, abs=1e-12)
