"""What a GPU host that runs from source needs, made here and carried there (``.gpu-carry/``).

The GPU host has torch and transformers but none of the model packages, no
llama.cpp, no Ray, no network, and at most 64 MiB of files travel with a run
(the repository's tracked files included). ``prepare`` writes, on a host that
has everything:

- ``models/<name>/``: the weights that fit -- the detector's darknet files
  (35 MB), copied with ``pipelines.models.copy_model``, so they are real there;
- ``site/``: small pure-Python architecture packages the GPU path imports
  (``efficientnet_lite_pytorch``, 124 KB);
- ``inputs/``: the profiler's inputs with every upstream stage's real output
  (the default variants, run here exactly as ``profiler.inputs.stage_inputs``
  runs them), and for each LLM variant a *recording* of every prompt's token ids
  (the GGUF's own llama.cpp vocabulary) and of the tokens the Q4 variant
  generated for it (llama.cpp, greedy): the random-weights model there
  generates exactly those counts;
- ``manifest.json``: the variants (specs as records, no YAML parser needed),
  how each runs there (real or random weights), each one's accuracy figure
  from the CPU profile, and how and when this was made.

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

__all__ = ["CARRY_SCHEMA", "CarriedVariant", "Carry", "prepare", "load", "DEFAULT_CARRY", "MAX_INPUTS"]

CARRY_SCHEMA = 1
DEFAULT_CARRY = Path(".gpu-carry")
# Inputs carried at most: the CPU profiler's pool is 14 (7 photos and their mirror images).
MAX_INPUTS = 16
# How each variant family runs on the GPU host: its real weights where they fit in the
# 64 MiB that travel (the detector's 35 MB), else its architecture with random weights.
REAL = "real"
RANDOM = "random"


@dataclass(frozen=True)
class Family:
    """How a variant family runs on the GPU host: which PyTorch factory, which weights."""

    torch_factory: str  # "module:callable": the family's PyTorch runtime, on the CPU or a GPU
    weights: str  # REAL | RANDOM


FAMILIES = {
    "varipipe.pipelines.variants.detector": Family("varipipe.pipelines.variants.detector_torch:make", REAL),
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
    weights: str  # REAL | RANDOM
    accuracy: Accuracy  # the CPU variant's figure (accuracy does not depend on the hardware)
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


def _accuracy_figures(pipeline: str, profile_path: Path | None) -> tuple[dict[tuple[str, str], Accuracy], str]:
    from varipipe.profiler.store import default_profile_path, load_profile

    path = profile_path or default_profile_path(pipeline)
    prof = load_profile(path, pipeline=pipeline)
    figures: dict[tuple[str, str], Accuracy] = {}
    for p in prof.points:
        if p.hardware.startswith("cpu:"):
            figures.setdefault((p.stage, p.variant), Accuracy(p.accuracy, AccuracyKind(p.accuracy_kind),
                                                              p.accuracy_source))
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


def _copy_package(name: str, site: Path) -> None:
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed here; install the model packages first")
    src = Path(list(found.submodule_search_locations)[0])
    shutil.copytree(src, site / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))


def prepare(out: Path, pipeline: str = "vision-caption", cpu_profile: Path | None = None,
            max_inputs: int = MAX_INPUTS, log: Callable[[str], None] = print) -> Path:
    """Write the carry folder ``out`` for ``pipeline``; returns the manifest's path."""
    from varipipe.pipelines.models import copy_model
    from varipipe.profiler.inputs import payloads_for_stage, stage_inputs
    from varipipe.spec import find_spec

    spec = find_spec(pipeline)
    figures, profile_used = _accuracy_figures(spec.name, cpu_profile)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    log(f"running the default upstream variants on the inputs of {spec.name} (CPU)")
    full = stage_inputs(spec, threads=1)[:max_inputs]
    images = {p.request_id: p.image for p in full if p.image is not None}
    np.savez_compressed(out / "inputs" / "images.npz", **images)
    texts = {p.request_id: p.text for p in full if p.text is not None}
    outputs = {p.request_id: {k: _encode(v) for k, v in p.outputs.items()} for p in full}
    (out / "inputs" / "outputs.json").write_text(json.dumps({"order": [p.request_id for p in full],
                                                             "texts": texts, "outputs": outputs}) + "\n")
    carried, skipped = [], {}
    for stage in spec.stages:
        for v in stage.variants:
            family = FAMILIES.get(_family(v))
            figure = figures.get((stage.name, v.name)) or v.accuracy
            if family is None or figure is None:
                skipped[f"{stage.name}/{v.name}"] = ("no GPU path for its family" if family is None
                                                     else f"no accuracy figure in {profile_used} or the spec")
                continue
            params = dict(v.params)
            if family.weights == REAL:
                copy_model(str(v.params.get("model", "yolov3-tiny")), out / "models")
            else:
                params["weights"] = RANDOM
            if _family(v) == LLM_FAMILY:
                log(f"recording {v.name}'s prompts and generated lengths (llama.cpp, CPU)")
                rec = out / "inputs" / f"recording-{v.name}.json"
                info = _record_llm(v, payloads_for_stage(spec, stage.name, full), rec)
                params["recording"] = rec.name  # relative to inputs/; made absolute by load()
                log(f"  {info['prompts']} prompts, {info['new_tokens_mean']:.1f} tokens generated on average")
            torch_spec = dataclasses.replace(v, factory=family.torch_factory, runtime=TORCH_RUNTIME, params=params)
            carried.append({"spec": _spec_to_json(torch_spec), "weights": family.weights, "cpu_runtime": v.runtime,
                            "accuracy": {"value": figure.value, "kind": figure.kind.value, "source": figure.source}})
    site = out / "site"
    for name in PACKAGES:
        _copy_package(name, site)
    manifest = {
        "schema": CARRY_SCHEMA, "pipeline": spec.name, "made": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "accuracy_from": profile_used, "inputs": len(full), "variants": carried, "skipped": skipped,
        "packages": list(PACKAGES),
        "note": ("detector: real weights (copied); classifiers and LLMs: their architectures with seeded random "
                 "weights (their weights do not fit in what travels); accuracy does not depend on the hardware, so "
                 "each variant keeps the figure of its CPU runtime"),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return path


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
        if "recording" in spec.params:
            spec = dataclasses.replace(spec, params={**spec.params,
                                                     "recording": str(root / "inputs" / spec.params["recording"])})
        a = item["accuracy"]
        variants.append(CarriedVariant(spec, item["weights"], Accuracy(a["value"], AccuracyKind(a["kind"]), a["source"]),
                                       item["cpu_runtime"]))
    doc = json.loads((root / "inputs" / "outputs.json").read_text(encoding="utf-8"))
    with np.load(root / "inputs" / "images.npz") as npz:
        images = {k: npz[k] for k in npz.files}
    stages = list(dict.fromkeys(v.spec.stage for v in variants)) if stage_names is None else list(stage_names)
    payloads: dict[str, list[Payload]] = {}
    for i, stage in enumerate(stages):
        upstream = set(stages[:i])
        payloads[stage] = [
            Payload(request_id=rid, image=images.get(rid), text=doc["texts"].get(rid),
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
