"""The profiler (issue 5): measure, store and model every variant's behaviour.

The folders follow the profiling loop:

    plan.py           the grid of points, measurement windows and stability, what is missing (pure)
    inputs.py         real inputs per stage: bundled photos through the upstream stages
    measure.py        time ``variant.infer(batch)`` in a fresh process per (variant, hardware)
    stats.py          percentiles, mean, throughput of one point and of its windows (pure)
    accuracy.py       agreement and caption scores, reference choice (pure)
    eval_set.py       the bundled photos' reference captions (pipelines without an evaluation set)
    evaluate.py       run a stage's variants on the inputs, choose its accuracy figures
    labelled.py       the flagship's labelled set (evalset/labels.json): records and loader (EVAL_SET.md)
    detection_map.py  COCO-style mAP@0.5, equal to pycocotools (pure)
    label_mapping.py  the recorded ImageNet-1k -> COCO mapping (data/imagenet1k_to_coco.json)
    vision_eval.py    vision-caption's evaluation set: per-stage inputs and metrics on the labelled set
    paired.py, ladder.py   paired bootstrap / McNemar; rungs by cost and adjacent comparisons (pure)
    ladder_run.py, end_to_end.py   run and time a stage's rungs; a configuration end to end
    latency_model.py  l(b) = alpha + beta * b per (variant, hardware) with held-back error (pure)
    store.py          the versioned profile JSON: load (validated), save (atomic)
    hostinfo.py       what a profile was measured on
    run.py            one resumable profile run: all of the above, saving after every point
    report.py, plots.py   ``varipipe profile show``: tables and PNGs

Only light modules are imported here; measuring pulls in the runtimes lazily.
"""

from varipipe.profiler.latency_model import (
    LatencyFit,
    fit_profile,
    fits_from_metadata,
    predict_latency,
)
from varipipe.profiler.store import default_profile_path, load_profile, save_profile

__all__ = [
    "LatencyFit",
    "default_profile_path",
    "fit_profile",
    "fits_from_metadata",
    "load_profile",
    "predict_latency",
    "save_profile",
]
