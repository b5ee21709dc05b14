"""Identity stage: returns what it got after an optional fixed service time.

Used by the framework-overhead benchmark and by tests that need a stage with
no model. ``params.service_s`` is a per-batch sleep, ``params.per_item_s`` a
per-item one, so a test can give a stage a known latency. ``params.fail_load`` and
``params.fail_infer`` make loading or every batch raise: an injected stage fault.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from varipipe.pipelines.variant import NoModelVariant, Payload, StageOutput
from varipipe.records import VariantSpec


@dataclass(frozen=True)
class Echo:
    stage: str
    variant: str
    batch_size: int

    def to_json(self) -> dict[str, Any]:
        return {"echo": True, "batch_size": self.batch_size}

    def summary(self) -> str:
        return f"echo (batch of {self.batch_size})"


class IdentityVariant(NoModelVariant):
    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads)

    def load(self) -> None:
        time.sleep(float(self.spec.params.get("load_s", 0.0)))
        if self.spec.params.get("fail_load"):
            raise RuntimeError(f"variant {self.spec.name} is configured to fail loading")
        super().load()

    def infer(self, batch: Sequence[Payload]) -> list[StageOutput]:
        service = float(self.spec.params.get("service_s", 0.0))
        service += float(self.spec.params.get("per_item_s", 0.0)) * len(batch)
        if service > 0:
            time.sleep(service)
        if self.spec.params.get("fail_infer"):
            raise RuntimeError(f"variant {self.spec.name} is configured to fail every batch")
        return [Echo(self.spec.stage, self.spec.name, len(batch)) for _ in batch]


def make(spec: VariantSpec, threads: int = 1, device: str = "cpu") -> IdentityVariant:
    return IdentityVariant(spec, threads=threads, device=device)
