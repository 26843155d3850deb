"""Where the device tests run: the CPU implementation of the device interface everywhere, CUDA
wherever torch sees a GPU (marked `gpu`, skipped with the reason elsewhere)."""
from __future__ import annotations

import pytest
import torch


def no_cuda_reason() -> str | None:
    """Why CUDA cases cannot run here, or None where they can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build: no CUDA device"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


#: Parametrize a device test over both implementations: "cpu" and "cuda".
WHERE = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    no_cuda_reason() is not None, reason=str(no_cuda_reason()))])]
