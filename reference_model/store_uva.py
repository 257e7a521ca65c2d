"""Zero-copy (UVA) access to a pinned host table from CUDA kernels: ``host_mode: uva``.

With unified virtual addressing (every 64-bit CUDA platform since CUDA 4), page-locked memory
from ``cudaHostAlloc`` (what ``torch.empty(..., pin_memory=True)`` uses) is mapped into the
device's address space at the same address, so a kernel can dereference the host pointer and
each row read becomes a PCIe (or NVLink-C2C) transaction. Torch has no public "CUDA view of a
pinned CPU tensor" call (vLLM and DGL ship C++ for it: ``get_cuda_view_from_cpu_tensor``,
``gather_pinned_tensor_rows``). Here the view is made in Python through the CUDA Array
Interface: ``torch.as_tensor`` on an object exposing ``__cuda_array_interface__`` builds the
tensor with ``at::from_blob``, whose device comes from ``cudaPointerGetAttributes``, which
accepts registered (pinned) host memory. The view is checked against a CPU gather before use;
if anything fails, :func:`uva_view` raises ``RuntimeError`` with the reason and the caller can
fall back to ``host_mode: staged``.

Measured elsewhere (HARDWARE.md, dmlc/dgl#6635): UVA gathers reach 14-24 GB/s on an A100 for
100k rows but 2-10 GB/s for 1k rows, so small decode batches favour the staged copy.
"""

from __future__ import annotations

import torch

# typestr of the CUDA Array Interface (numpy's); 16-bit floats travel as int16 and are viewed
# back, because numpy has no bfloat16.
_TYPESTR = {torch.float32: ("<f4", torch.float32), torch.float16: ("<i2", torch.int16),
            torch.bfloat16: ("<i2", torch.int16), torch.int64: ("<i8", torch.int64)}


class _CudaArrayInterface:
    """Minimal holder of ``__cuda_array_interface__`` (version 3) that keeps its tensor alive."""

    def __init__(self, host: torch.Tensor, typestr: str):
        self.host = host
        self.__cuda_array_interface__ = {
            "shape": tuple(host.shape),
            "typestr": typestr,
            "data": (host.data_ptr(), False),
            "strides": None,
            "version": 3,
        }


def uva_view(host_RD: torch.Tensor, device: int | None = None) -> torch.Tensor:
    """A CUDA tensor aliasing the pinned, contiguous CPU tensor ``host_RD`` (no copy)."""
    if not torch.cuda.is_available():
        raise RuntimeError("UVA needs CUDA")
    if host_RD.device.type != "cpu" or not host_RD.is_pinned() or not host_RD.is_contiguous():
        raise RuntimeError("UVA needs a contiguous, pinned CPU tensor (DenseRows with pin=True)")
    if host_RD.dtype not in _TYPESTR:
        raise RuntimeError(f"UVA view of dtype {host_RD.dtype} is not supported")
    typestr, carrier = _TYPESTR[host_RD.dtype]
    with torch.cuda.device(device if device is not None else torch.cuda.current_device()):
        view = torch.as_tensor(_CudaArrayInterface(host_RD.view(carrier), typestr), device="cuda")
    view = view.view(host_RD.dtype)
    if view.data_ptr() != host_RD.data_ptr() or not view.is_cuda:
        raise RuntimeError("torch copied instead of aliasing the pinned memory: no UVA view")
    probe = torch.randint(0, host_RD.shape[0], (min(64, host_RD.shape[0]),))
    if not torch.equal(view.index_select(0, probe.cuda()).cpu(), host_RD.index_select(0, probe)):
        raise RuntimeError("a UVA gather disagreed with the CPU gather")
    return view
