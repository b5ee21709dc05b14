from dataclasses import replace

import pytest

from varipipe.errors import SpecError, UnknownNameError
from varipipe.records import SLA, Decision, DecisionStatus, StageDecision
from varipipe.spec import find_spec, list_pipelines, parse_spec

MINIMAL = {
    "name": "tiny",
    "sla": {"latency_s": 1.0},
    "stages": [
        {"name": "a", "variants": [{"name": "x", "runtime": "identity",
                                     "factory": "varipipe.pipelines.variants.identity:make"}]},
    ],
}


def test_minimal_spec_parses():
    spec = parse_spec(MINIMAL, "tiny.yaml")
    assert spec.stage_names == ("a",)
    assert spec.stage("a").default_variant == "x"
    assert spec.sla == SLA(1.0)


def test_bad_field_names_file_field_and_value():
    bad = {**MINIMAL, "stages": [{**MINIMAL["stages"][0], "num_cpus": -1}]}
    with pytest.raises(SpecError) as e:
        parse_spec(bad, "tiny.yaml")
    msg = str(e.value)
    assert "tiny.yaml" in msg and "stages[0](a).num_cpus" in msg and "-1" in msg


def test_a_variant_error_names_the_spec_file_not_the_weights_package():
    from varipipe.pipelines.variant import build_variant
    from varipipe.pipelines.variants.retriever import Retriever

    spec = find_spec("rag-qa")
    retriever = spec.stage("retriever").variants[0]
    assert retriever.source  # a package name: what the messages used to show as the file
    with pytest.raises(SpecError) as e:
        Retriever(replace(retriever, params={**retriever.params, "method": "grep"}))
    assert str(e.value).startswith(f"{spec.source_file}: stages.retriever.variants.{retriever.name}.params.method:")
    with pytest.raises(SpecError) as e:
        build_variant(replace(retriever, factory="no_such_module:make"))
    assert str(e.value).startswith(f"{spec.source_file}: stages.retriever.variants.{retriever.name}.factory:")


def test_unknown_default_variant_is_rejected():
    bad = {**MINIMAL, "stages": [{**MINIMAL["stages"][0], "default_variant": "nope"}]}
    with pytest.raises(SpecError, match="nope"):
        parse_spec(bad, "tiny.yaml")


def test_unknown_pipeline_lists_known():
    with pytest.raises(UnknownNameError) as e:
        find_spec("no-such-pipeline")
    assert "no-such-pipeline" in str(e.value)
    for name in list_pipelines():
        assert name in str(e.value)


def test_bundled_specs_load():
    names = list_pipelines()
    assert "identity-chain" in names
    for name in names:
        assert find_spec(name).name == name


def test_decision_round_trip():
    d = Decision(stages=(StageDecision("a", "x", 4, 2, "cpu:1", 0.01),), status=DecisionStatus.OPTIMAL,
                 reason="ok", binding_constraints=("sla_end_to_end",))
    back = Decision.from_dict(d.to_dict())
    assert back == d
    assert back.feasible and d.to_dict()["feasible"] is True
    assert d.same_config(back)


@pytest.mark.parametrize("latency", [0, -1, float("nan")])
def test_sla_rejects_bad_latency(latency):
    with pytest.raises(ValueError):
        SLA(latency)
