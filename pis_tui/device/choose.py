"""A --gpu name to a device: local (this machine, detected) or a GPU profile shipped in profiles/gpus/."""

from __future__ import annotations

from .local import local_cuda_name, local_device
from .gpus import LOCAL, DeviceProfile, shipped_gpu


def load_gpu(name: str) -> DeviceProfile:
    if name == LOCAL:
        return local_device()
    return shipped_gpu(name)


def default_gpu() -> str:
    """``local`` when a CUDA GPU is present, else h200-sxm."""
    return LOCAL if local_cuda_name() else "h200-sxm"


