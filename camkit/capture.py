"""Scoped capture of a layer's features, and the model state camkit promises to leave untouched."""

from __future__ import annotations

import contextlib
import difflib
import weakref
from typing import Any, Iterator

_capturing: "weakref.WeakSet[Any]" = weakref.WeakSet()  # modules with an active camkit capture hook


class FeatureCapture:
    """Holds what a forward hook saw. With ``grad_from_here`` the captured output becomes a leaf
    that requires grad and autograd is switched on from that layer on, so only the layers after
    the target are recorded (a last-layer Grad-CAM costs about one inference).

    The rest of the model gets a copy of the output, so an in-place operation after the layer (e.g.
    ``ReLU(inplace=True)``) cannot change the captured features. A hook that is not ``armed`` lets
    forward passes through untouched (an open ``Explainer`` between calls)."""

    def __init__(self, layer_name: str, grad_from_here: bool = False) -> None:
        self.layer_name = layer_name
        self.grad_from_here = grad_from_here
        self.features: Any = None
        self.calls = 0
        self.armed = True

    def hook(self, module: Any, inputs: Any, output: Any) -> Any:
        import torch

        if not self.armed:
            return None
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"layer {self.layer_name!r} returned {type(output).__name__}, not a tensor; "
                            f"choose a layer whose output is the feature tensor")
        self.calls += 1
        if self.grad_from_here:
            leaf = output.detach()
            if leaf.is_inference():  # inputs made under inference_mode: a normal copy can require grad
                leaf = leaf.clone()
            leaf.requires_grad_(True)
            torch.set_grad_enabled(True)  # restored by the caller (capture_features or Explainer)
            self.features = leaf
            return leaf.clone()  # differentiable: the gradient still reaches the leaf
        self.features = output
        return output.clone()


def resolve_layer(model: Any, layer: Any) -> tuple[str, Any]:
    """``(dotted_name, module)`` for a module or a dotted name; unknown names list close matches."""
    names = {name: module for name, module in model.named_modules()}
    if isinstance(layer, str):
        if layer in names:
            return layer, names[layer]
        close = difflib.get_close_matches(layer, [n for n in names if n], n=5, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(f"model {type(model).__name__} has no layer {layer!r}.{hint}")
    for name, module in names.items():
        if module is layer:
            return name, module
    raise ValueError(f"module {type(layer).__name__} is not part of model {type(model).__name__}")


@contextlib.contextmanager
def capture_features(model: Any, layer: Any, grad_from_here: bool = False,
                     restore_grad_mode: bool = True) -> Iterator[FeatureCapture]:
    """Capture the output of ``layer`` during forward passes inside the block.

    The hook is removed and (with ``restore_grad_mode``) the autograd mode of the block's start
    restored on exit, also when the forward raises."""
    import torch

    name, module = resolve_layer(model, layer)
    if module in _capturing:  # stacked hooks would hand one capture the other's detached copy
        raise RuntimeError(f"layer {name!r} already has an active camkit capture (another Explainer is open "
                           f"on it); close that one first")
    capture = FeatureCapture(name, grad_from_here)
    grad_mode = torch.is_grad_enabled()
    handle = module.register_forward_hook(capture.hook)
    _capturing.add(module)
    try:
        yield capture
    finally:
        _capturing.discard(module)
        handle.remove()
        if restore_grad_mode:
            torch.set_grad_enabled(grad_mode)


@contextlib.contextmanager
def evaluation_mode(model: Any, enabled: bool = True) -> Iterator[None]:
    """Put the model in eval mode for the block and restore every submodule's own flag after."""
    training = [m for m in model.modules() if m.training] if enabled else []
    try:
        for module in training:  # only what is in training mode needs switching (and restoring)
            module.training = False
        yield
    finally:
        for module in training:
            module.training = True


def trace_target_layer(model: Any, sample: Any) -> tuple[str, int]:
    """Find the layer feeding global pooling by running one sample: the outermost module whose
    output is the last tensor with more than one site. Returns ``(name, rank)``."""
    import torch

    order: list[tuple[str, Any]] = []
    handles = []

    def make_hook(name: str) -> Any:
        def hook(module: Any, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                order.append((name, output))
        return hook

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(make_hook(name)))
    try:
        with torch.inference_mode(), evaluation_mode(model):
            model(sample)
    finally:
        for h in handles:
            h.remove()
    candidates = [i for i, (_, t) in enumerate(order) if t.ndim >= 3 and t[0, 0].numel() > 1]
    if not candidates:
        raise ValueError(f"could not find a layer with spatial features in {type(model).__name__}; pass layer=...")
    last_name, last = order[candidates[-1]]
    # modules finishing later with the very same tensor are its parents: take the outermost
    for name, tensor in order[candidates[-1] + 1:]:
        if tensor is last:
            last_name = name
    return last_name, last.ndim
