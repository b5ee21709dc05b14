"""The contract every model variant implements, and how variants are built.

A stage's runtime is a ``Variant``: it loads its weights, runs ``infer`` on a
*batch* of requests (one runtime call where the runtime supports it) and
releases memory on ``unload``. Serve deployments, ``varipipe run`` and the
profiler all call the same objects, so what is profiled is what serves.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from varipipe.records import VariantSpec

__all__ = ["Payload", "StageOutput", "StageTrace", "Variant", "build_variant"]


@runtime_checkable
class StageOutput(Protocol):
    """A stage's typed result for one request."""

    def to_json(self) -> dict[str, Any]: ...

    def summary(self) -> str: ...


@dataclass(frozen=True)
class StageTrace:
    """How one stage served one request: which variant, in what batch, how long."""

    stage: str
    variant: str
    batch_size: int
    queue_s: float  # from arrival at the replica to the start of its batch
    compute_s: float  # the batch's runtime call
    hardware: str = ""  # the variant's hardware label ("cpu:1"), as the profile names it


@dataclass
class Payload:
    """One request on its way through the pipeline.

    ``image`` is HxWx3 uint8 RGB; ``outputs`` holds the typed result of every
    stage that already ran, keyed by stage name, in pipeline order. ``question``
    is the request's question about the image (None: caption it); only the LLM
    stage reads it, the others pass it on.
    """

    request_id: str = ""
    image: np.ndarray | None = None
    text: str | None = None
    question: str | None = None
    outputs: dict[str, StageOutput] = field(default_factory=dict)
    deadline: float | None = None  # absolute time.time() seconds; None = no deadline
    trace: list[StageTrace] = field(default_factory=list)  # filled in by serving, in stage order
    dropped_at: str = ""  # the stage that dropped it because its deadline could no longer be met


class Variant(Protocol):
    """A loaded (or loadable) model variant of one stage."""

    spec: VariantSpec

    @property
    def name(self) -> str: ...

    @property
    def hardware(self) -> str: ...  # "cpu:<threads>" or "gpu:<model>"

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]: ...


class NoModelVariant:
    """The part of a variant with no model to load (the template rung, the test identity stage):
    a name, a CPU thread count, and ``loaded`` flipped by ``load``/``unload``. Subclasses add ``infer``."""

    def __init__(self, spec: VariantSpec, threads: int = 1) -> None:
        self.spec = spec
        self._threads = max(1, int(threads))
        self.loaded = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def hardware(self) -> str:
        return f"cpu:{self._threads}"

    def load(self) -> None:
        self.loaded = True

    def unload(self) -> None:
        self.loaded = False


def build_variant(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> Variant:
    """Import ``spec.factory`` ("module:callable") and build the variant (not yet loaded)."""
    module_name, _, attr = spec.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise spec.spec_error(".factory", f"cannot import {spec.factory!r}: {e}") from e
    return factory(spec, threads=threads, device=device)
