"""camkit plugin: kernels for CUDA tensors (``CudaKernel``) and forward-pass acceleration.

Answers ``camkit_select_kernel`` for ``device_type == "cuda"`` and declines (None) otherwise, so
the torch / numpy kernels serve on the CPU. ``CAMKIT_TRITON=1`` opts in to the Triton kernels.
No torch import here: the kernel module is imported inside the hook.
"""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl

_kernels: dict[bool, Any] = {}


@hookimpl
def camkit_select_kernel(device_type: str, dtype: Any) -> Any:
    if device_type != "cuda":
        return None
    from camkit_plugins.gpu.kernel import CudaKernel, triton_requested

    use_triton = triton_requested()
    if use_triton not in _kernels:  # one instance per mode: it caches colour tables per device
        _kernels[use_triton] = CudaKernel(use_triton=use_triton)
    return _kernels[use_triton]
