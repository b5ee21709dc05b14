"""What every real variant shares: spec, thread count, name, hardware, load state."""

from __future__ import annotations

import ctypes
import gc
from typing import Any

from varipipe.records import VariantSpec

__all__ = ["ModelVariant"]


def _trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise), so unload shows in RSS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


class ModelVariant:
    """Base of the detector, classifier and LLM variants (the ``Variant`` protocol)."""

    devices: tuple[str, ...] = ("cpu",)  # the devices this runtime can run on ("cpu", "gpu")

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        if device not in self.devices:
            raise spec.spec_error("", f"device {device!r} is not supported by {type(self).__name__} "
                                      f"(runtime {spec.runtime!r}); use one of {list(self.devices)}")
        self.spec = spec
        self.device = device
        self.threads = max(1, int(threads))
        self._model: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def hardware(self) -> str:
        return f"cpu:{self.threads}"

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def param(self, key: str, default: Any) -> Any:
        """A ``params`` entry of the spec, or the default the variant documents."""
        return self.spec.params.get(key, default)

    def model_name(self) -> str:
        try:
            return str(self.spec.params["model"])
        except KeyError:
            raise self.spec.spec_error(".params.model",
                                       "missing: name the weights (see varipipe.pipelines.models.SOURCES)") from None

    def unload(self) -> None:
        """Drop the runtime object so its memory is freed (native buffers included)."""
        self._model = None
        gc.collect()
        _trim_heap()

    def _require_loaded(self) -> Any:
        if self._model is None:
            self.load()
        return self._model

    def load(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError
