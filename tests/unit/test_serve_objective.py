"""--objective on serve and demo: what the ILP policies are asked to optimise."""

from __future__ import annotations

import argparse
import math

from varipipe.adapter.optimizer import solve
from varipipe.adapter.synthetic import vision_caption_like
from varipipe.commands import demo, serve
from varipipe.records import SLA


def _parse(module, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser) if hasattr(module, "add_arguments") else serve.add_serving_arguments(parser)
    return parser.parse_args(argv)


def test_serve_defaults_to_the_weighted_objective_and_the_demo_to_max_accuracy():
    assert _parse(serve, []).objective == "weighted"
    assert _parse(demo, []).objective == "max-accuracy"
    assert serve.objective_options("weighted") == {}


def test_max_accuracy_is_bounded_by_capacity_alone():
    options = serve.objective_options("max-accuracy")
    assert options["objective"] == "max-accuracy" and math.isfinite(options["max_cost"])
    profile = vision_caption_like()
    d = solve(profile, 1.0, SLA(5.0), **options)
    assert d.status.value == "optimal"
