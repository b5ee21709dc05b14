"""`varipipe serve` arguments: app name and route prefix reach the application options."""

from __future__ import annotations

import argparse

import pytest

from varipipe.commands.serve import add_arguments, app_options


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_defaults_serve_one_app_on_the_root():
    opts = app_options(_parse("--pipeline", "identity-chain"))
    assert (opts.app_name, opts.route_prefix) == ("varipipe", "/")


def test_a_second_pipeline_gets_its_own_name_and_prefix():
    opts = app_options(_parse("--pipeline", "doc-ocr", "--app-name", "ocr", "--route-prefix", "/ocr"))
    assert (opts.pipeline, opts.app_name, opts.route_prefix) == ("doc-ocr", "ocr", "/ocr")


@pytest.mark.parametrize("bad", ["ocr", "/o cr", ""])
def test_a_route_prefix_must_be_a_path(bad, capsys):
    with pytest.raises(SystemExit):
        _parse("--route-prefix", bad)
    assert "route prefix starts with '/'" in capsys.readouterr().err


def test_admission_is_on_and_there_is_no_default_deadline_unless_asked():
    opts = app_options(_parse("--pipeline", "identity-chain"))
    assert opts.admission and opts.deadline_sla_factor == 0.0
    opts = app_options(_parse("--pipeline", "identity-chain", "--deadline", "1", "--no-admission"))
    assert not opts.admission and opts.deadline_sla_factor == 1.0


@pytest.mark.parametrize("bad", ["-1", "soon", "1000"])
def test_a_default_deadline_is_a_number_of_slas(bad, capsys):
    with pytest.raises(SystemExit):
        _parse("--deadline", bad)
    assert "--deadline" in capsys.readouterr().err
