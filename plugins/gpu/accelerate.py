"""Faster forward passes for explanation: autocast, channels-last, torch.compile (CUDA graphs).

``accelerate(model, dtype="bf16", channels_last=True)`` returns a wrapper module; its CAM layer and
classifier are found as in the original model (the wrapper keeps it as ``.model``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from camkit.plugin_manager import UnknownNameError

DTYPES = {"fp32": None, "float32": None, "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def autocast_dtype(name: str | None) -> Any:
    """The torch dtype for an autocast name ("bf16", "fp16"; "fp32" / None: no autocast)."""
    import torch

    if name is None:
        return None
    if name not in DTYPES:
        raise UnknownNameError.of("dtype", name, sorted(DTYPES))
    return getattr(torch, DTYPES[name]) if DTYPES[name] else None


def _make_wrapper_class() -> Any:
    import torch
    import torch.nn as nn

    class AcceleratedModel(nn.Module):
        """Runs ``model`` under autocast (when a dtype is set) on channels-last inputs (when asked)."""

        def __init__(self, model: nn.Module, dtype: Any, channels_last: bool) -> None:
            super().__init__()
            self.model = model
            self.autocast_dtype = dtype
            self.channels_last = channels_last

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            if self.channels_last and inputs.ndim == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            autocast = (torch.autocast(inputs.device.type, dtype=self.autocast_dtype)
                        if self.autocast_dtype is not None else contextlib.nullcontext())
            with autocast:
                return self.model(inputs)

    return AcceleratedModel


def accelerate(model: Any, *, dtype: str | None = None, channels_last: bool = False, compile: bool = False,
               compile_mode: str | None = None) -> Any:
    """A faster forward for ``model`` (modified in place where the option is in place).

    ``dtype``: "bf16" / "fp16" autocast (weights stay fp32; logits in the autocast dtype are fine for
    ``explain``, which compares and normalises in that dtype). ``channels_last``: converts the weights
    and inputs to NHWC memory format (4-D models). ``compile``: ``torch.compile`` the wrapped model;
    ``compile_mode="reduce-overhead"`` adds CUDA graphs. Compiling switches on torch's guards on module
    hooks for the whole process (``skip_nnmodule_hook_guards = False``) so camkit's hooks are seen;
    keep an ``Explainer`` open as a context manager so the hook set, and the compiled graph, stay the same.
    """
    import torch

    wrapper = _make_wrapper_class()(model, autocast_dtype(dtype), channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile or compile_mode:
        import torch._dynamo

        # by default compiled graphs ignore hooks added after compilation, so camkit's capture hook
        # would never fire; guarding on hooks recompiles once per hook set instead (process-wide)
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        wrapper.compile(mode=compile_mode)
    return wrapper
