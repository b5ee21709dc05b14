"""``varipipe run``: argument parsing, image loading errors, variant choice, the runner (identity stages)."""

from __future__ import annotations

import argparse

import pytest

from varipipe.cli import main
from varipipe.commands.run import load_image, parse_variants
from varipipe.errors import BadInputError, UnknownNameError
from varipipe.pipelines.runner import PipelineRunner, choose_variants
from varipipe.pipelines.variant import Payload
from varipipe.spec import find_spec


def test_parse_variants():
    assert parse_variants("") == {}
    assert parse_variants("detector=yolov3-tiny-608, llm=gemma3-270m") == {
        "detector": "yolov3-tiny-608", "llm": "gemma3-270m"}


@pytest.mark.parametrize("bad", ["detector", "=x", "detector=", "a=x,a=y"])
def test_parse_variants_rejects_malformed_items(bad):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_variants(bad)


def test_not_an_image_is_a_bad_input_naming_the_file(tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(BadInputError, match="notes.png"):
        load_image(str(bad))


def test_unknown_sample_lists_the_samples():
    with pytest.raises(BadInputError, match="chelsea"):
        load_image("no-such-file-or-sample")


def test_cli_exits_2_on_a_bad_image(tmp_path, capsys):
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    assert main(["run", str(bad), "--pipeline", "identity-chain"]) == 2
    assert "truncated.jpg" in capsys.readouterr().err


def test_cli_exits_2_on_an_unknown_variant(capsys):
    assert main(["run", "chelsea", "--pipeline", "identity-chain", "--variants", "first=nope"]) == 2
    assert "known: fast, slow" in capsys.readouterr().err


def test_choose_variants_defaults_and_unknown_names():
    spec = find_spec("vision-caption")
    chosen = choose_variants(spec, {"llm": "template"})
    assert [v.name for v in chosen.values()] == ["yolov10n-416", "efficientnet-lite0", "template"]
    with pytest.raises(UnknownNameError, match="qwen2.5-coder-0.5b"):
        choose_variants(spec, {"llm": "gpt-9"})
    with pytest.raises(UnknownNameError, match="stage"):
        choose_variants(spec, {"ranker": "x"})


def test_runner_runs_stages_in_order_and_times_them():
    spec = find_spec("identity-chain")
    with PipelineRunner(spec, {"first": "fast", "second": "fast"}) as runner:
        result = runner.run(Payload(request_id="r"))
    assert [s.stage for s in result.stages] == ["first", "second"]
    assert all(s.seconds > 0 for s in result.stages)
    assert result.to_json()["stages"][0]["variant"] == "fast"


def test_cli_prints_every_stage(capsys):
    assert main(["run", "chelsea", "--pipeline", "identity-chain", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"stage": "first"' in out and '"stage": "second"' in out
