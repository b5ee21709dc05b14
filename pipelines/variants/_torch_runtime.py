"""What the PyTorch variants share: device choice, hardware label, dtype, GPU memory.

``device="gpu"`` in a variant factory selects the PyTorch runtime on CUDA
device 0 (a Serve replica that asks for ``num_gpus`` sees only its own GPU as
device 0); ``device="cpu"`` runs the very same code on the CPU, which is how CI
covers it. torch is imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import gc
import re
from typing import Any

from varipipe.errors import ModelUnavailableError
from varipipe.pipelines.variants._base import ModelVariant
from varipipe.records import VariantSpec

__all__ = ["TorchVariant", "normalise_gpu_name", "gpu_label", "torch_device", "reset_gpu_peak", "gpu_peak_mb",
           "GPU_DEVICE"]

GPU_DEVICE = "gpu"
# Words that name the vendor or product line, not the chip: "NVIDIA GeForce RTX 4090" -> "rtx-4090".
_VENDOR_WORDS = ("nvidia", "geforce", "tesla", "quadro")


def normalise_gpu_name(name: str) -> str:
    """A GPU's marketing name as a hardware label part: ``"NVIDIA H200"`` -> ``"h200"``."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in _VENDOR_WORDS]
    return "-".join(words) or "unknown"


def torch_device(device: str):  # -> torch.device
    """``"cpu"`` -> the CPU; ``"gpu"`` -> CUDA device 0, or ModelUnavailableError where there is none."""
    import torch

    if device == GPU_DEVICE:
        if not torch.cuda.is_available():
            raise ModelUnavailableError("device 'gpu': torch finds no CUDA device (torch.cuda.is_available() "
                                        f"is False; torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        return torch.device("cuda", 0)
    return torch.device("cpu")


def gpu_label() -> str:
    """``gpu:<model>`` of CUDA device 0, e.g. ``gpu:h200`` (torch.cuda.get_device_name, normalised)."""
    import torch

    return f"gpu:{normalise_gpu_name(torch.cuda.get_device_name(0))}"


def reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mb() -> float:
    """Peak CUDA memory allocated by this process's tensors since the last reset, MiB."""
    import torch

    if not torch.cuda.is_available():
        return 0.0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


class TorchVariant(ModelVariant):
    """A variant whose runtime is PyTorch, on the CPU or on a CUDA GPU.

    ``gpu_dtype`` (spec param, default per subclass) is the dtype on the GPU; on the
    CPU the variant always runs in float32, the dtype its weights were trained in.
    """

    devices = ("cpu", GPU_DEVICE)
    default_gpu_dtype = "float16"
    # cuDNN times its convolution algorithms on the first call at each input shape and keeps the
    # fastest: worth it where a batch size fixes the shape (the detector), not where the batch's
    # size varies with its content (a classifier's crops per batch), which would re-time often.
    cudnn_benchmark = False

    def __init__(self, spec: VariantSpec, threads: int = 1, device: str = "cpu") -> None:
        super().__init__(spec, threads, device)
        self._hardware = ""

    @property
    def hardware(self) -> str:
        if self.device == GPU_DEVICE:
            if not self._hardware:
                self._hardware = gpu_label()
            return self._hardware
        return f"cpu:{self.threads}"

    def dtype_name(self) -> str:
        """The dtype this variant computes in on its device (float32 on the CPU)."""
        return str(self.param("gpu_dtype", self.default_gpu_dtype)) if self.device == GPU_DEVICE else "float32"

    def torch_setup(self) -> tuple[Any, Any]:
        """(torch.device, dtype) for this variant; sets torch's CPU threads to the replica's."""
        import torch

        torch.set_num_threads(self.threads)
        dev = torch_device(self.device)
        if dev.type == "cpu":
            return dev, torch.float32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark  # process-wide: the variant loaded last decides
        name = self.dtype_name()
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{self.spec.stage}/{self.name}: params.gpu_dtype {name!r} is not a torch dtype")
        return dev, dtype

    def unload(self) -> None:
        super().unload()
        if self.device == GPU_DEVICE:
            import torch

            gc.collect()
            torch.cuda.empty_cache()  # hand the freed blocks back, so another variant can use them
