"""Scoped capture of features, and the model state camkit promises to leave untouched.

Features are read at a :class:`CapturePoint`: the output of a module (``"layer4"``), the input of a
module (``"avgpool:input"``), or the input of the n-th call of a function during the forward
(``"adaptive_avg_pool2d#0:input"``, for models that pool functionally, e.g. DenseNet's
``F.relu`` + ``F.adaptive_avg_pool2d``). Where the default point comes from is
``camkit.locate.locate_features``: the tensor global pooling receives, found by watching one forward.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

_capturing: "weakref.WeakSet[Any]" = weakref.WeakSet()  # modules with an active camkit capture hook

_CALL_SPEC = re.compile(r"^(?:(?P<module>[\w.]*)/)?(?P<function>\w+)#(?P<index>\d+)$")


@dataclass(frozen=True)
class CapturePoint:
    """Where features are read. ``kind``: ``"output"`` or ``"input"`` of module ``module`` (dotted name,
    ``""`` for the model itself), or ``"call"``: the first tensor argument of the ``call_index``-th call
    (counted over the whole forward) of the torch function named ``function``."""

    module: str
    kind: str = "output"
    function: str = ""
    call_index: int = 0

    def __str__(self) -> str:
        if self.kind == "output":
            return self.module
        if self.kind == "input":
            return f"{self.module}:input"
        owner = f"{self.module}/" if self.module else ""
        return f"{owner}{self.function}#{self.call_index}:input"

    @classmethod
    def parse(cls, model: Any, spec: Any) -> "CapturePoint":
        """A point from a module, ``"name"`` / ``"name:output"`` / ``"name:input"``, a call spec
        ``"[module/]function#index:input"`` or a ``CapturePoint``; the module must exist in ``model``."""
        if isinstance(spec, CapturePoint):
            if spec.module:
                resolve_layer(model, spec.module)
            return spec
        if not isinstance(spec, str):
            return cls(resolve_layer(model, spec)[0])
        name, _, kind = spec.rpartition(":") if spec.endswith((":input", ":output")) else (spec, "", "output")
        call = _CALL_SPEC.match(name)
        if call and kind == "input" and not _has_module(model, name):
            module = call["module"] or ""
            if module:
                resolve_layer(model, module)
            return cls(module, "call", call["function"], int(call["index"]))
        return cls(resolve_layer(model, name)[0], kind)


def _has_module(model: Any, name: str) -> bool:
    return any(n == name for n, _ in model.named_modules())


class FeatureCapture:
    """Holds what the capture saw. With ``grad_from_here`` the captured tensor becomes a leaf that
    requires grad and autograd is switched on from that point on, so only the layers after it are
    recorded (a last-layer Grad-CAM costs about one inference).

    The rest of the model gets a copy, so an in-place operation later (e.g. ``ReLU(inplace=True)``)
    cannot change the captured features. A capture that is not ``armed`` lets forward passes through
    untouched (an open ``Explainer`` between calls, Score-CAM's masked forwards)."""

    def __init__(self, point: CapturePoint, grad_from_here: bool = False) -> None:
        self.point = point
        self.grad_from_here = grad_from_here
        self.features: Any = None
        self.calls = 0
        self.armed = True

    @property
    def layer_name(self) -> str:
        return str(self.point)

    def reset(self, grad_from_here: bool) -> None:
        """Arm for one more forward pass."""
        self.grad_from_here, self.features, self.calls, self.armed = grad_from_here, None, 0, True

    def take(self, tensor: Any) -> Any:
        """Record ``tensor``; return what the model should continue with."""
        import torch

        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{self.layer_name!r} gives {type(tensor).__name__}, not a tensor; choose a layer "
                            f"whose output (or ':input') is the feature tensor")
        self.calls += 1
        if self.grad_from_here:
            leaf = tensor.detach()
            if leaf.is_inference():  # inputs made under inference_mode: a normal copy can require grad
                leaf = leaf.clone()
            leaf.requires_grad_(True)
            torch.set_grad_enabled(True)  # restored by whoever armed the capture
            self.features = leaf
            return leaf.clone()  # differentiable: the gradient still reaches the leaf
        self.features = tensor
        return tensor.clone()

    # -- the three kinds of points
    def output_hook(self, module: Any, inputs: Any, output: Any) -> Any:
        return self.take(output) if self.armed else None

    def input_hook(self, module: Any, args: Any, kwargs: Any) -> Any:
        if not self.armed:
            return None
        if args:
            return (self.take(args[0]), *args[1:]), kwargs
        if kwargs:  # keyword-only call (e.g. ``layer(hidden_states=x)``): the first keyword tensor
            key = next(iter(kwargs))
            return args, {**kwargs, key: self.take(kwargs[key])}
        raise TypeError(f"{self.layer_name!r}: the module was called without arguments, nothing to capture")

    def run(self, forward: Callable[[], Any], grad_from_here: bool, record: bool = False) -> Any:
        """``forward()`` with the capture armed: under ``no_grad`` (autograd switched on from the capture
        point when ``grad_from_here``), with autograd on throughout (``record``: a method differentiates
        with respect to what came before the point) or under ``inference_mode``; grad mode restored and the
        capture disarmed after, so later forwards pass untouched. The point must be reached exactly once."""
        import torch

        self.reset(grad_from_here and not record)
        grad_mode = torch.is_grad_enabled()
        mode = torch.enable_grad() if record else torch.no_grad() if grad_from_here else torch.inference_mode()
        try:
            with self.during_forward(), mode:
                output = forward()
        finally:
            torch.set_grad_enabled(grad_mode)
            self.armed = False
        if self.calls != 1:
            raise RuntimeError(f"{self.layer_name!r} was called {self.calls} times in one forward pass; a CAM "
                               f"needs features computed exactly once (not a shared module: try the input of the "
                               f"module that follows it, 'name:input')")
        return output

    @contextlib.contextmanager
    def during_forward(self) -> Iterator[None]:
        """Context for one forward pass: a call point watches torch functions only inside it."""
        if self.point.kind != "call":
            yield
            return
        with _CallCapture(self):
            yield


def _function_mode_base() -> Any:
    from torch.overrides import TorchFunctionMode

    return TorchFunctionMode


class _CallCapture:
    """Enters a ``TorchFunctionMode`` that hands the n-th call of one function to the capture."""

    def __init__(self, capture: FeatureCapture) -> None:
        base = _function_mode_base()
        owner = capture

        class Mode(base):  # type: ignore[misc, valid-type]
            seen = 0

            def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                kwargs = kwargs or {}
                if owner.armed and function_name(func) == owner.point.function:
                    index, Mode.seen = Mode.seen, Mode.seen + 1
                    if index == owner.point.call_index and args:
                        args = (owner.take(args[0]), *args[1:])
                return func(*args, **kwargs)

        self.mode = Mode()

    def __enter__(self) -> None:
        self.mode.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.mode.__exit__(*exc)


def function_name(func: Any) -> str:
    """``"adaptive_avg_pool2d"`` for ``F.adaptive_avg_pool2d``, ``"mean"`` for ``Tensor.mean`` and for
    the ATen op ``aten.mean.dim`` (what ``torch.export`` graphs call)."""
    packet = getattr(func, "overloadpacket", None)
    return getattr(packet, "__name__", None) or getattr(func, "__name__", "") or str(func)


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
    """Capture the features at ``layer`` (a module, a dotted name, ``"name:input"`` or a
    ``CapturePoint``) during forward passes inside the block; for a function-call point, run the
    forward inside ``capture.during_forward()``.

    The hook is removed and (with ``restore_grad_mode``) the autograd mode of the block's start
    restored on exit, also when the forward raises."""
    import torch

    point = CapturePoint.parse(model, layer)
    module = resolve_layer(model, point.module)[1]
    if module in _capturing:  # stacked hooks would hand one capture the other's detached copy
        raise RuntimeError(f"layer {str(point) or type(model).__name__!r} already has an active camkit capture: "
                           f"another Explainer is open on it, or another thread is explaining the same model "
                           f"right now; close that one first (or give each thread its own model copy)")
    capture = FeatureCapture(point, grad_from_here)
    grad_mode = torch.is_grad_enabled()
    if point.kind == "output":
        handle = module.register_forward_hook(capture.output_hook)
    elif point.kind == "input":
        handle = module.register_forward_pre_hook(capture.input_hook, with_kwargs=True)
    else:
        handle = None
    _capturing.add(module)
    try:
        yield capture
    finally:
        _capturing.discard(module)
        if handle is not None:
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


def each_module_call(model: Any, before: Callable[[str, Any, Any, Any], None],
                     after: Callable[[str, Any, Any, Any], None]) -> contextlib.ExitStack:
    """Register ``before(name, module, args, kwargs)`` and ``after(name, module, args, output)``
    on every module; the returned stack removes them."""
    stack = contextlib.ExitStack()
    for name, module in model.named_modules():
        def pre(mod: Any, args: Any, kwargs: Any, name: str = name) -> None:
            before(name, mod, args, kwargs)

        def post(mod: Any, args: Any, output: Any, name: str = name) -> None:
            after(name, mod, args, output)

        stack.callback(module.register_forward_pre_hook(pre, with_kwargs=True).remove)
        stack.callback(module.register_forward_hook(post).remove)
    return stack
