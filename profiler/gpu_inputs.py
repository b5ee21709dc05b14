"""What a GPU host that runs from source needs, made here and carried there (``.gpu-carry/``).

The GPU host has torch and transformers but none of the model packages, no
llama.cpp, no Ray, no network, and at most 64 MiB of files travel with a run
(the repository's tracked files included). ``prepare`` writes, on a host that
has everything:

- ``models/<name>/``: the detectors' files, copied with
  ``pipelines.models.copy_model``, each as ``CARRIED_MODELS`` says: YOLOv10-N's
  checkpoint as shipped (11.4 MB, float32: the GPU check runs on it),
  YOLOv4-tiny (24 MB as .weights) as a float16 state dict with batch norm
  folded (12 MB: the exact values its float16 GPU path computes with,
  ``_darknet.save_state``), YOLOv3-tiny (35 MB; in the spec only as a
  candidate) as its cfg alone, run with seeded random weights
  (``_darknet.random_darknet``: its timing, not its detections, which the CPU
  profile has);
- ``site/``: small pure-Python architecture packages the GPU path imports
  (``efficientnet_lite_pytorch``, 124 KB);
- ``inputs/``: the profiler's inputs (the pipeline's evaluation photos where it
  has a set, each with its question for the LLM) with every upstream stage's
  real output (the default variants, run here exactly as
  ``profiler.inputs.stage_inputs`` runs them), and for each LLM variant a
  *recording* of every prompt's token ids
  (the GGUF's own llama.cpp vocabulary) and of the tokens the Q4 variant
  generated for it (llama.cpp, greedy): the random-weights model there
  generates exactly those counts;
- ``manifest.json``: the variants (specs as records, no YAML parser needed;
  params in ``CARRY_PATHS`` are paths relative to the folder), how each runs
  there (``REAL``, ``REAL_FLOAT16`` or ``RANDOM`` weights), each one's accuracy figure
  from the CPU profile or the spec (null where neither has one yet), and how and
  when this was made.

``load`` reads it back with numpy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import importlib.util
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from varipipe.pipelines.variant import Payload
from varipipe.records import Accuracy, AccuracyKind, VariantSpec

__all__ = ["CARRY_SCHEMA", "CARRIED_MODELS", "CARRY_PATHS", "CarriedVariant", "Carry", "prepare", "load",
           "carry_bytes", "cpu_figures", "DEFAULT_CARRY", "MAX_INPUTS", "REAL", "REAL_FLOAT16", "RANDOM"]

CARRY_SCHEMA = 2  # 2: params' paths relative to the folder (CARRY_PATHS), CARRIED_MODELS, questions
DEFAULT_CARRY = Path(".gpu-carry")
# Inputs carried at most: the CPU profiler's pool is 14 (7 photos and their mirror images).
MAX_INPUTS = 16
# How each variant family runs on the GPU host: its real weights where they fit in the
# 64 MiB that travel (the detectors'), else its architecture with random weights.
REAL = "real"
REAL_FLOAT16 = "real-float16"  # real weights carried rounded to float16, the dtype they run in on the GPU
RANDOM = "random"
# How each detector model's files travel (weights label per model). All three as shipped
# (11.4 + 24 + 35 MB) would not fit beside the tracked files (about 13 MB) in the 64 MiB; the
# carry is kept to about 30 MB so that the two together stay under 50 MiB as the repository grows.
# YOLOv10-N and YOLOv4-tiny (the detector ladder) run with their real weights, YOLOv4-tiny's rounded
# to float16 (the dtype its GPU path runs in); YOLOv3-tiny, kept in the spec only as a candidate,
# travels as its cfg alone and runs with seeded random weights (timing only).
CARRIED_MODELS = {"yolov10n-pt": REAL, "yolov4-tiny": REAL_FLOAT16, "yolov3-tiny": RANDOM}
# Params whose values are paths relative to the carry folder; ``load`` makes them absolute.
CARRY_PATHS = ("recording", "arch_config")


@dataclass(frozen=True)
class Family:
    """How a variant family runs on the GPU host: which PyTorch factory, which weights."""

    torch_factory: str  # "module:callable": the family's PyTorch runtime, on the CPU or a GPU
    weights: str  # REAL | RANDOM
    params: tuple[tuple[str, str], ...] = ()  # spec params the PyTorch runtime needs on top of the variant's


FAMILIES = {
    "varipipe.pipelines.variants.detector": Family("varipipe.pipelines.variants.detector_torch:make", REAL),
    "varipipe.pipelines.variants.yolov10": Family("varipipe.pipelines.variants.detector_torch:make", REAL,
                                                  (("arch", "yolov10"),)),
    "varipipe.pipelines.variants.classifier": Family("varipipe.pipelines.variants.classifier_torch:make", RANDOM),
    "varipipe.pipelines.variants.llm": Family("varipipe.pipelines.variants.llm_torch:make", RANDOM),
}
LLM_FAMILY = "varipipe.pipelines.variants.llm"
TORCH_RUNTIME = "torch"
# Pure-Python packages the GPU path imports that the GPU host lacks (architectures only).
PACKAGES = ("efficientnet_lite_pytorch",)


@dataclass(frozen=True)
class CarriedVariant:
    """A variant as it will run on the GPU host: its spec (params adjusted), weights, accuracy figure."""

    spec: VariantSpec
    weights: str  # REAL | REAL_FLOAT16 | RANDOM
    # The CPU variant's figure (accuracy does not depend on the hardware); None where the CPU profile has
    # none yet: the GPU run measures it anyway and keeps its points apart until one exists (gpu_score).
    accuracy: Accuracy | None
    cpu_runtime: str  # the runtime that figure was measured with (opencv_dnn, onnx, llama_cpp)


@dataclass(frozen=True)
class Carry:
    """A loaded carry folder."""

    root: Path
    pipeline: str
    variants: tuple[CarriedVariant, ...]
    payloads: dict[str, list[Payload]]  # stage -> inputs carrying the upstream stages' outputs
    manifest: dict[str, Any]

    @property
    def models(self) -> Path:
        return self.root / "models"


# --- serialising stage outputs (frozen dataclasses of plain values) --------------------------------


def _encode(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _encode(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"cannot carry a {type(obj).__name__} in a stage output")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict) and "__dataclass__" in obj:
        module, _, name = obj["__dataclass__"].partition(":")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _decode(v) for k, v in obj["fields"].items()})
    if isinstance(obj, dict) and "__tuple__" in obj:
        return tuple(_decode(v) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _decode(v) for k, v in obj.items()}
    return obj


def _spec_to_json(spec: VariantSpec) -> dict[str, Any]:
    return _encode(spec)


def _spec_from_json(doc: dict[str, Any]) -> VariantSpec:
    spec = _decode(doc)
    if not isinstance(spec, VariantSpec):
        raise ValueError(f"not a variant spec: {doc!r:.200}")
    return spec


# --- preparing (on a host with every package) --------------------------------------------------------


def cpu_figures(pipeline: str, profile_path: Path | None = None) -> tuple[dict[tuple[str, str], Accuracy], str]:
    """Each variant's accuracy figure, (stage, variant) -> figure: its CPU points' in ``profile_path``
    (default: the pipeline's shipped profile), else the spec's declared one; and the profile's path."""
    from varipipe.profiler.store import default_profile_path, load_profile
    from varipipe.spec import find_spec

    path = profile_path or default_profile_path(pipeline)
    prof = load_profile(path, pipeline=pipeline)
    figures: dict[tuple[str, str], Accuracy] = {}
    for p in prof.points:
        if p.hardware.startswith("cpu:"):
            figures.setdefault((p.stage, p.variant), Accuracy(p.accuracy, AccuracyKind(p.accuracy_kind),
                                                              p.accuracy_source))
    for stage in find_spec(pipeline).stages:
        for v in stage.variants:
            if v.accuracy is not None:
                figures.setdefault((stage.name, v.name), v.accuracy)
    return figures, str(path)


def _family(spec: VariantSpec) -> str:
    return spec.factory.partition(":")[0]


def _record_llm(spec: VariantSpec, payloads: Sequence[Payload], target: Path) -> dict[str, Any]:
    """Run the Q4 variant (llama.cpp, CPU) on every input; record prompt ids and generated tokens."""
    from llama_cpp import Llama

    from varipipe.pipelines.models import model_files
    from varipipe.pipelines.variant import build_variant
    from varipipe.pipelines.variants.llm_torch import RecordedPrompt, Recording, TorchCaptioner

    cpu = build_variant(spec, threads=1)
    cpu.load()
    try:
        captions = cpu.infer(list(payloads))
    finally:
        cpu.unload()
    vocab = Llama(model_path=str(model_files(str(spec.params["model"])).weights), vocab_only=True, verbose=False)
    prompter = TorchCaptioner(spec)  # builds the prompts exactly as the GPU path will
    prompts: dict[str, RecordedPrompt] = {}
    for payload, caption in zip(payloads, captions, strict=True):
        prompt, _ = prompter.prompt(payload)
        ids = vocab.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        prompts[prompt] = RecordedPrompt(tuple(ids), int(caption.tokens))
    recording = Recording(str(spec.params["model"]), prompts,
                          "prompt ids: llama.cpp tokenizer of the GGUF (the Q4 variant's own); new_tokens: "
                          f"completion tokens of {spec.name} on llama.cpp (CPU, greedy, max_tokens "
                          f"{spec.params.get('max_tokens', 'default')})")
    target.write_text(json.dumps(recording.to_json(), indent=1) + "\n", encoding="utf-8")
    return {"prompts": len(prompts), "new_tokens_mean": float(np.mean([c.tokens for c in captions]))}


def _model_name(torch_spec: VariantSpec) -> str:
    """The model files a PyTorch detector variant is built from (its architecture decides)."""
    from varipipe.pipelines.variant import build_variant

    return build_variant(torch_spec).model_name()  # not loaded: cheap


def _carry_model(name: str, out: Path) -> tuple[str, dict[str, str]]:
    """Carry model ``name`` into ``out`` (once) as ``CARRIED_MODELS`` says; (weights label, params to add)."""
    from varipipe.pipelines.models import COPY_MANIFEST, copy_model, model_files

    weights = CARRIED_MODELS.get(name, REAL)
    if weights == RANDOM:  # the architecture alone: the darknet cfg
        cfg = model_files(name).config
        if cfg is None:
            raise ValueError(f"model {name!r}: random weights need its darknet cfg")
        target = out / "arch" / f"{name}.cfg"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cfg, target)
        return RANDOM, {"weights": RANDOM, "arch_config": str(target.relative_to(out))}
    folder = out / "models" / name
    if not (folder / COPY_MANIFEST).exists():
        copy_model(name, out / "models")
        if weights == REAL_FLOAT16:
            _to_float16_state(folder)
    return weights, {}


def _to_float16_state(folder: Path) -> None:
    """Replace a copied darknet model's .weights by a float16 state dict of the folded network."""
    import torch

    from varipipe.pipelines.models import COPY_MANIFEST
    from varipipe.pipelines.variants._darknet import STATE_SUFFIX, load_darknet, save_state

    manifest = json.loads((folder / COPY_MANIFEST).read_text(encoding="utf-8"))
    weights = folder / manifest["weights"]
    target = folder / f"{weights.stem}.float16{STATE_SUFFIX}"
    save_state(load_darknet(folder / manifest["config"], weights), target, torch.float16)
    weights.unlink()
    manifest["weights"] = target.name
    (folder / COPY_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _copy_package(name: str, site: Path) -> None:
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed here; install the model packages first")
    src = Path(list(found.submodule_search_locations)[0])
    shutil.copytree(src, site / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def prepare(out: Path, pipeline: str = "vision-caption", cpu_profile: Path | None = None,
            max_inputs: int = MAX_INPUTS, log: Callable[[str], None] = print) -> Path:
    """Write the carry folder ``out`` for ``pipeline``; returns the manifest's path."""
    from varipipe.profiler.inputs import payloads_for_stage, stage_inputs
    from varipipe.spec import find_spec

    spec = find_spec(pipeline)
    figures, profile_used = cpu_figures(spec.name, cpu_profile)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    log(f"running the default upstream variants on the inputs of {spec.name} (CPU)")
    full = stage_inputs(spec, threads=1)[:max_inputs]
    images = {p.request_id: p.image for p in full if p.image is not None}
    np.savez_compressed(out / "inputs" / "images.npz", **images)
    texts = {p.request_id: p.text for p in full if p.text is not None}
    questions = {p.request_id: p.question for p in full if p.question is not None}
    outputs = {p.request_id: {k: _encode(v) for k, v in p.outputs.items()} for p in full}
    (out / "inputs" / "outputs.json").write_text(json.dumps({"order": [p.request_id for p in full], "texts": texts,
                                                             "questions": questions, "outputs": outputs}) + "\n")
    carried, skipped = [], {}
    for stage in spec.stages:
        for v in stage.variants:
            family = FAMILIES.get(_family(v))
            figure = figures.get((stage.name, v.name))
            if family is None:
                skipped[f"{stage.name}/{v.name}"] = "no GPU path for its family"
                continue
            params = {**v.params, **dict(family.params)}
            weights = family.weights
            if family.weights == REAL:
                weights, extra = _carry_model(_model_name(dataclasses.replace(v, factory=family.torch_factory,
                                                                              params=params)), out)
                params.update(extra)
            else:
                params["weights"] = RANDOM
            if _family(v) == LLM_FAMILY:
                log(f"recording {v.name}'s prompts and generated lengths (llama.cpp, CPU)")
                rec = out / "inputs" / f"recording-{v.name}.json"
                info = _record_llm(v, payloads_for_stage(spec, stage.name, full), rec)
                params["recording"] = str(rec.relative_to(out))  # made absolute by load()
                log(f"  {info['prompts']} prompts, {info['new_tokens_mean']:.1f} tokens generated on average")
            torch_spec = dataclasses.replace(v, factory=family.torch_factory, runtime=TORCH_RUNTIME, params=params)
            carried.append({"spec": _spec_to_json(torch_spec), "weights": weights, "cpu_runtime": v.runtime,
                            "accuracy": None if figure is None else {"value": figure.value, "kind": figure.kind.value,
                                                                     "source": figure.source}})
    site = out / "site"
    for name in PACKAGES:
        _copy_package(name, site)
    manifest = {
        "schema": CARRY_SCHEMA, "pipeline": spec.name, "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "accuracy_from": profile_used, "inputs": len(full), "variants": carried, "skipped": skipped,
        "packages": list(PACKAGES),
        "models": {name: CARRIED_MODELS.get(name, REAL) for name in sorted(_carried_names(out))},
        "note": ("detectors of the ladder: real weights (YOLOv10-N's checkpoint as shipped, YOLOv4-tiny as a "
                 "float16 state dict: the values its float16 GPU path computes with); YOLOv3-tiny (a candidate "
                 "only), the classifiers and the LLMs: their architectures with seeded random weights (their "
                 "weights do not fit in what travels); accuracy does not depend on the hardware, so each variant "
                 "keeps the figure of its CPU runtime"),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


def _carried_names(out: Path) -> set[str]:
    models = {p.name for p in (out / "models").iterdir()} if (out / "models").exists() else set()
    return models | ({p.stem for p in (out / "arch").glob("*.cfg")} if (out / "arch").exists() else set())


def carry_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (what ``carry`` sends)."""
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


# --- loading (on the GPU host: numpy and the standard library) ---------------------------------------


def load(root: Path, stage_names: Sequence[str] | None = None) -> Carry:
    """Read a carry folder made by ``prepare``; payloads per stage carry only their upstream outputs."""
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("schema") != CARRY_SCHEMA:
        raise ValueError(f"{root}/manifest.json: schema {manifest.get('schema')!r}, expected {CARRY_SCHEMA}")
    variants = []
    for item in manifest["variants"]:
        spec = _spec_from_json(item["spec"])
        paths = {k: str(root / str(v)) for k, v in spec.params.items() if k in CARRY_PATHS}
        if paths:
            spec = dataclasses.replace(spec, params={**spec.params, **paths})
        a = item["accuracy"]
        figure = None if a is None else Accuracy(a["value"], AccuracyKind(a["kind"]), a["source"])
        variants.append(CarriedVariant(spec, item["weights"], figure, item["cpu_runtime"]))
    doc = json.loads((root / "inputs" / "outputs.json").read_text(encoding="utf-8"))
    with np.load(root / "inputs" / "images.npz") as npz:
        images = {k: npz[k] for k in npz.files}
    stages = list(dict.fromkeys(v.spec.stage for v in variants)) if stage_names is None else list(stage_names)
    payloads: dict[str, list[Payload]] = {}
    for i, stage in enumerate(stages):
        upstream = set(stages[:i])
        payloads[stage] = [
            Payload(request_id=rid, image=images.get(rid), text=doc["texts"].get(rid),
                    question=doc["questions"].get(rid),
                    outputs={k: _decode(v) for k, v in doc["outputs"][rid].items() if k in upstream})
            for rid in doc["order"]]
    return Carry(root, manifest["pipeline"], tuple(variants), payloads, manifest)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m varipipe.profiler.gpu_inputs",
                                     description="Write the folder a GPU host needs to profile a pipeline from source.")
    parser.add_argument("out", nargs="?", default=str(DEFAULT_CARRY), help="carry folder (default: %(default)s)")
    parser.add_argument("--pipeline", default="vision-caption", help="pipeline (default: %(default)s)")
    parser.add_argument("--cpu-profile", default=None, help="profile whose CPU accuracy figures to carry "
                                                            "(default: the pipeline's shipped profile)")
    parser.add_argument("--max-inputs", type=int, default=MAX_INPUTS, help="inputs carried (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    manifest = prepare(out, args.pipeline, Path(args.cpu_profile) if args.cpu_profile else None, args.max_inputs)
    print(f"wrote {manifest}; {carry_bytes(out) / 2**20:.1f} MiB in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
