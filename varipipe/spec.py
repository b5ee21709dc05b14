"""Pipeline specs: the YAML users write, validated by pydantic, turned into records.

A spec names its stages in order; each stage lists its variants. A variant
names the ``factory`` ("module:callable") that builds its runtime, so a new
variant is a module plus a YAML entry (see README, "Add your own pipeline").
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from varipipe.errors import SpecError, UnknownNameError
from varipipe.records import SLA, Accuracy, AccuracyKind, PipelineSpec, StageSpec, VariantSpec

__all__ = ["load_spec", "parse_spec", "spec_dirs", "list_pipelines", "find_spec"]

SPEC_DIR_ENV = "VARIPIPE_SPEC_PATH"  # extra folders with pipeline YAML, os.pathsep-separated


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _AccuracyModel(_Strict):
    value: float = Field(gt=0, le=1)
    kind: AccuracyKind = AccuracyKind.DECLARED
    source: str = Field(min_length=3)


class _VariantModel(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    runtime: str = Field(min_length=1)
    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    source: str = ""
    input_size: int | None = Field(default=None, gt=0)
    native_batching: bool = True
    accuracy: _AccuracyModel | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class _StageModel(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    variants: list[_VariantModel] = Field(min_length=1)
    default_variant: str | None = None
    fanout: float = Field(default=1.0, gt=0)
    num_cpus: float = Field(default=0.5, gt=0)
    threads: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _default_is_known(self) -> _StageModel:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names repeat: {names}")
        if self.default_variant is not None and self.default_variant not in names:
            raise ValueError(f"default_variant {self.default_variant!r} is not one of {names}")
        return self


class _SLAModel(_Strict):
    latency_s: float = Field(gt=0)
    percentile: float = Field(default=99.0, gt=0, le=100)


class _PipelineModel(_Strict):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9_\-]*$")
    description: str = ""
    input: str = "image"
    evaluation: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    sla: _SLAModel
    stages: list[_StageModel] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _input_kind(cls, v: str) -> str:
        if v not in ("image", "text"):
            raise ValueError(f"input must be 'image' or 'text', got {v!r}")
        return v

    @model_validator(mode="after")
    def _unique_stages(self) -> _PipelineModel:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names repeat: {names}")
        return self


def _to_record(m: _PipelineModel, source_file: str) -> PipelineSpec:
    stages = []
    for s in m.stages:
        variants = tuple(
            VariantSpec(
                stage=s.name,
                name=v.name,
                runtime=v.runtime,
                factory=v.factory,
                source=v.source,
                input_size=v.input_size,
                native_batching=v.native_batching,
                accuracy=Accuracy(v.accuracy.value, v.accuracy.kind, v.accuracy.source) if v.accuracy else None,
                params=dict(v.params),
                spec_file=source_file,
            )
            for v in s.variants
        )
        stages.append(
            StageSpec(
                name=s.name,
                variants=variants,
                default_variant=s.default_variant or variants[0].name,
                fanout=s.fanout,
                num_cpus=s.num_cpus,
                threads=s.threads,
            )
        )
    return PipelineSpec(
        name=m.name,
        stages=tuple(stages),
        sla=SLA(m.sla.latency_s, m.sla.percentile),
        description=m.description,
        input_kind=m.input,
        source_file=source_file,
        evaluation=m.evaluation or "",
    )


def _field_path(loc: Iterable[Any], data: Any) -> str:
    """Turn a pydantic location into ``stages[1](classifier).variants[0](mobilenet).name``."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and item < len(node):
                node = node[item]
                if isinstance(node, dict) and "name" in node:
                    label += f"({node['name']})"
            parts.append(label)
        else:
            parts.append(("." if parts else "") + str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return "".join(parts) or "(top level)"


def parse_spec(data: Any, source_file: str = "<string>") -> PipelineSpec:
    """Validate an already-parsed YAML document into a ``PipelineSpec``."""
    if not isinstance(data, dict):
        raise SpecError(source_file, "(top level)", f"expected a mapping, got {type(data).__name__}")
    try:
        model = _PipelineModel.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        value = err.get("input")
        shown = repr(value) if not isinstance(value, dict | list) else type(value).__name__
        raise SpecError(source_file, _field_path(err["loc"], data), f"{err['msg']} (got {shown})") from e
    return _to_record(model, source_file)


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate one pipeline spec YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(str(path), "(file)", f"cannot read: {e.strerror or e}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(str(path), "(syntax)", f"not valid YAML: {e}") from e
    return parse_spec(data, str(path))


def spec_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``: $VARIPIPE_SPEC_PATH first, then the bundled specs."""
    import os

    extra = [Path(p) for p in os.environ.get(SPEC_DIR_ENV, "").split(os.pathsep) if p]
    bundled = Path(str(resources.files("varipipe.pipelines") / "specs"))
    return [*extra, bundled]


def list_pipelines() -> list[str]:
    names: dict[str, None] = {}
    for d in spec_dirs():
        for f in sorted(d.glob("*.yaml")):
            names.setdefault(f.stem, None)
    return list(names)


def find_spec(name_or_path: str) -> PipelineSpec:
    """Load a spec by bundled name (``vision-caption``) or by a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return load_spec(p)
    for d in spec_dirs():
        candidate = d / f"{name_or_path}.yaml"
        if candidate.exists():
            return load_spec(candidate)
    raise UnknownNameError("pipeline", name_or_path, list_pipelines())
