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


def test_the_demos_defaults_put_the_flagships_trade_inside_its_burst():
    # DEMO_SLA_S and DEMO_PEAK_RPS were chosen so the shipped profile keeps Qwen through the
    # rising and falling phases and moves the LLM to the template at the peak (benchmarks/README
    # "Demo"): the planner, as the demo runs it, on two shared cores.
    from varipipe.adapter.configurations import Limits
    from varipipe.profiler.store import default_profile_path, load_profile
    from varipipe.spec import find_spec

    args = _parse(demo, [])
    assert args.sla is None and args.peak_rps == demo.DEMO_PEAK_RPS  # resolved per pipeline at run time
    sla = SLA(demo.DEMO_SLA_S["vision-caption"])
    assert sla.latency_s < find_spec("vision-caption").sla.latency_s
    profile = load_profile(default_profile_path("vision-caption"))
    limits = Limits(cost_mode="shared", cluster_cores=2.0)

    def llm(rps: float) -> str:
        return solve(profile, rps, sla, limits, **serve.objective_options("max-accuracy")).stage("llm").variant

    fracs = sorted({frac for frac, _ in demo.LOAD_SHAPE})
    assert [llm(f * args.peak_rps) for f in fracs[:-1]] == ["qwen2.5-coder-0.5b"] * (len(fracs) - 1)
    assert llm(args.peak_rps) == "template"
