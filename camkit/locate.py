"""Where a model's CAM features come from: found by data flow, never by registration order.

CAM's identity (mean of the map + bias = the class logit) holds only for the tensor that global
average pooling actually receives, wherever that pooling happens: a pooling module, a functional
``adaptive_avg_pool2d`` after a functional ReLU (DenseNet), ``x.mean((2, 3))`` or a shared activation
module called twice (EfficientNet's ``_swish``). :func:`trace_features` runs one sample through the
model watching every module call and every torch function call, and names

- the **point**: the output of the module that produced the pooled tensor (if it ran once and nothing
  changed the tensor in place since), else the input of the pooling module, else the input of the
  pooling function call;
- the **layout**: channels-first or channels-last, from the axes pooled;
- the **classifier**: the first linear (or 1x1 conv) layer run after pooling that takes its channels.

Token models pool by taking the class token instead: there the point is the input of the last block
of the repeated transformer blocks, folded into a grid (``tokens_to_grid``) whose prefix tokens (class,
distillation, register tokens) are found from the token count and the input's aspect ratio.
Model families (``camkit_register_model_families``) may answer first, for models whose features need a
model-specific view (ST-GCN folds persons into the batch).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

from camkit.capture import CapturePoint, each_module_call, evaluation_mode, function_name
from camkit.layout import Layout

CHANNELS_FIRST = {3: "NCL", 4: "NCHW", 5: "NCDHW"}
CHANNELS_LAST = {3: "NLC", 4: "NHWC", 5: "NDHWC"}
ADAPTIVE_POOLS = {"adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3}
WINDOW_POOLS = {"avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3}
MAX_PREFIX_TOKENS = 16


@dataclass
class FeatureSource:
    """The answer to "which features, which layout, which classifier" for one model."""

    point: CapturePoint
    layout: Layout
    transform: Callable[[Any], Any] | None = None
    classifier: Any = None  # (classes, channels) weight of the layer after pooling, or None
    classifier_bias: Any = None  # its (classes,) bias, when it has one
    reason: str = ""  # how it was found, for messages and ``camkit explain --verbose``


@dataclass
class _Call:
    order: int
    name: str
    module: Any
    first_input: Any
    input_version: int = -1
    hands_back_first_input: bool = False  # returned its first input unchanged (same tensor, same version)


@dataclass
class _Pool:
    order: int
    function: str
    index: int
    tensor: Any
    version: int
    layout: str
    owner: str
    owner_module: Any


@dataclass
class _Trace:
    calls: list[_Call] = field(default_factory=list)
    finished: dict[str, int] = field(default_factory=dict)  # module name -> order its (last) call ended
    outputs: list[tuple[int, str, Any, int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    pools: list[_Pool] = field(default_factory=list)
    running: list[tuple[str, Any]] = field(default_factory=list)


def _version(tensor: Any) -> int:
    """The in-place version counter (inference tensors have none: they cannot be changed in place)."""
    return -1 if tensor.is_inference() else tensor._version


def pooled_layout(func: str, args: Any, kwargs: Any) -> str | None:
    """The layout of ``args[0]`` if this call is global average pooling over all its sites, else None."""
    import torch

    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        return None
    rank = x.ndim
    option = args[1] if len(args) > 1 else kwargs.get("output_size", kwargs.get("kernel_size", kwargs.get("dim")))
    if func in ADAPTIVE_POOLS:
        sizes = option if isinstance(option, (tuple, list)) else (option,) * ADAPTIVE_POOLS[func]
        global_pool = rank == ADAPTIVE_POOLS[func] + 2 and all(s == 1 for s in sizes)
        return CHANNELS_FIRST.get(rank) if global_pool else None
    if func in WINDOW_POOLS:
        sizes = option if isinstance(option, (tuple, list)) else (option,) * WINDOW_POOLS[func]
        global_pool = rank == WINDOW_POOLS[func] + 2 and tuple(sizes) == tuple(x.shape[2:])
        return CHANNELS_FIRST.get(rank) if global_pool else None
    if func == "mean" and option is not None:
        dims = {d % rank for d in (option if isinstance(option, (tuple, list)) else (option,))}
        if dims == set(range(2, rank)):
            return CHANNELS_FIRST.get(rank)
        if dims == set(range(1, rank - 1)):
            return CHANNELS_LAST.get(rank)
    return None


def _first_tensor(args: Any, kwargs: Any) -> Any:
    import torch

    for value in itertools.chain(args, kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def record_forward(model: Any, run: Callable[[], Any]) -> _Trace:
    """Run ``run()`` (one forward of ``model``) recording module calls and global pooling calls."""
    import torch
    from torch.overrides import TorchFunctionMode

    trace = _Trace()
    counter = itertools.count()
    function_calls: dict[str, int] = {}
    open_calls: list[_Call] = []

    def before(name: str, module: Any, args: Any, kwargs: Any) -> None:
        trace.running.append((name, module))
        trace.counts[name] = trace.counts.get(name, 0) + 1
        first = _first_tensor(args, kwargs)
        open_calls.append(_Call(next(counter), name, module, first, -2 if first is None else _version(first)))
        trace.calls.append(open_calls[-1])

    def after(name: str, module: Any, args: Any, output: Any) -> None:
        trace.running.pop()
        call = open_calls.pop()
        first = _first_tensor(output if isinstance(output, (tuple, list)) else (output,), {})
        call.hands_back_first_input = first is not None and first is call.first_input \
            and _version(first) == call.input_version
        order = next(counter)
        trace.finished[name] = order
        if isinstance(output, torch.Tensor):
            trace.outputs.append((order, name, output, _version(output)))

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            name = function_name(func)
            index = function_calls.get(name, 0)
            function_calls[name] = index + 1
            layout = pooled_layout(name, args, kwargs)
            if layout is not None:
                x = args[0] if args else kwargs["input"]
                owner, owner_module = trace.running[-1] if trace.running else ("", model)
                trace.pools.append(_Pool(next(counter), name, index, x, _version(x), layout, owner, owner_module))
            return func(*args, **kwargs)

    with each_module_call(model, before, after), torch.no_grad(), evaluation_mode(model), Watch():
        run()  # no_grad, not inference_mode: inference tensors have no version counter
    return trace


def trace_features(model: Any, run: Callable[[], Any], input_sizes: dict[str, int] | None = None) -> FeatureSource:
    """Find the features of ``model`` by watching ``run()``, one forward pass on an example input.

    ``input_sizes``: the primary input's axis sizes (``{"H": 224, "W": 224}``), used to fold tokens
    into a grid. Raises ``ValueError`` when the model has neither global pooling, nor transformer
    blocks, nor any layer with more than one site."""
    trace = record_forward(model, run)
    if trace.pools:
        return _from_pooling(trace, trace.pools[-1], input_sizes)
    tokens = _from_token_blocks(model, trace, input_sizes or {})
    if tokens is not None:
        return tokens
    return _last_spatial_output(model, trace, input_sizes or {})


def _from_pooling(trace: _Trace, pool: _Pool, input_sizes: dict[str, int] | None) -> FeatureSource:
    layout = Layout.parse(pool.layout)
    point, reason = None, ""
    producers = [name for _, name, tensor, version in trace.outputs
                 if tensor is pool.tensor and version == pool.version and trace.counts.get(name) == 1 and name]
    if producers:  # outputs are listed as modules finish: the last is the outermost
        point, reason = CapturePoint(producers[-1]), f"output of {producers[-1]!r}, which global pooling receives"
    elif pool.owner and trace.counts.get(pool.owner) == 1 and "pool" in type(pool.owner_module).__name__.lower():
        point, reason = CapturePoint(pool.owner, "input"), f"input of the global pooling module {pool.owner!r}"
    else:
        point = CapturePoint(pool.owner, "call", pool.function, pool.index)
        reason = f"input of the global pooling call {pool.function} (call {pool.index} of the forward)"
    channels = pool.tensor.shape[layout.channel_axis]
    classifier, bias = _classifier_after(trace, pool.order, channels)
    transform = None
    if layout.letters == "NLC" and input_sizes:  # tokens averaged: show them on the input's grid
        grid = token_grid(pool.tensor.shape[1], input_sizes)
        if grid is not None and grid[2] == 0:
            transform, layout = tokens_to_grid(grid[0], grid[1], 0), Layout.parse("NHWC")
    return FeatureSource(point, layout, transform, classifier, bias, reason)


def _classifier_after(trace: _Trace, order: int, channels: int) -> tuple[Any, Any]:
    """``(weight, bias)`` of the first Linear / 1x1 conv run after ``order`` that takes ``channels`` inputs."""
    import torch.nn as nn

    for call in trace.calls:
        module = call.module
        if call.order < order:
            continue
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and module.in_features == channels:
            return module.weight, module.bias
        if not isinstance(module, (nn.Linear, nn.Embedding)) and isinstance(weight, nn.Parameter) \
                and weight.ndim == 2 and weight.shape[1] == channels and not list(module.children()):
            return weight, getattr(module, "bias", None)  # a linear layer by its weights (torch.export modules)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.in_channels == channels \
                and all(k == 1 for k in module.kernel_size) and module.groups == 1:
            return module.weight.flatten(1), module.bias
    return None, None


def token_grid(length: int, input_sizes: dict[str, int]) -> tuple[int, int, int] | None:
    """``(height, width, prefix_tokens)`` for ``length`` tokens of an image of ``input_sizes``: the fewest
    prefix tokens (class, distillation, registers) leaving a grid with the image's aspect ratio."""
    height, width = input_sizes.get("H"), input_sizes.get("W")
    if not height or not width:
        return None
    for prefix in range(0, min(MAX_PREFIX_TOKENS, length - 1) + 1):
        grid = length - prefix
        for rows in range(1, grid + 1):
            if grid % rows == 0 and rows * width == (grid // rows) * height:
                return rows, grid // rows, prefix
    return None


def _from_token_blocks(model: Any, trace: _Trace, input_sizes: dict[str, int]) -> FeatureSource | None:
    """The input of the last of a run of identical transformer blocks taking (N, L, C) tokens (and
    changing them: a block that hands its first input back works on other tokens)."""
    import torch.nn as nn

    first_call: dict[int, _Call] = {}
    for call in trace.calls:
        first_call.setdefault(id(call.module), call)
    best: tuple[int, _Call, tuple[int, int, int]] | None = None
    for container in model.modules():  # containers need not run themselves (a ModuleList never does)
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(container.children())
        if len(children) < 2 or len({type(child) for child in children}) != 1:
            continue
        block = first_call.get(id(children[-1]))
        if block is None or trace.counts.get(block.name) != 1 or block.first_input is None \
                or block.first_input.ndim != 3 or block.hands_back_first_input:
            continue  # a block handing its first input back unchanged works on other tokens (CoaT's parallel ones)
        grid = token_grid(block.first_input.shape[1], input_sizes)
        if grid is not None and (best is None or trace.finished[block.name] > best[0]):
            best = (trace.finished[block.name], block, grid)
    if best is None:
        return None
    _, block, (rows, cols, prefix) = best
    classifier, bias = _classifier_after(trace, best[0], block.first_input.shape[2])
    return FeatureSource(CapturePoint(block.name, "input"), Layout.parse("NHWC"), tokens_to_grid(rows, cols, prefix),
                         classifier, bias, f"input of the last transformer block {block.name!r}: {rows}x{cols} patch "
                                     f"tokens after {prefix} prefix token(s)")


def _last_spatial_output(model: Any, trace: _Trace, input_sizes: dict[str, int]) -> FeatureSource:
    """No global pooling and no token blocks (e.g. flatten + linear heads): the outermost module giving
    the last tensor with more than one site, as Grad-CAM users pick by hand."""
    spatial = [(order, name, tensor) for order, name, tensor, _ in trace.outputs
               if name and tensor.ndim >= 3 and tensor[0, 0].numel() > 1 and trace.counts.get(name) == 1]
    if not spatial:
        raise ValueError(f"could not find the features of {type(model).__name__}: no global average pooling, no "
                         f"transformer blocks and no layer with more than one site ran in the forward pass; "
                         f"pass layer=... (a module name, 'name:input' for the input of a module)")
    _, name, tensor = spatial[-1]
    for order, other, same, _ in trace.outputs:  # modules finishing later with the same tensor are parents
        if same is tensor and order > spatial[-1][0] and other and trace.counts.get(other) == 1:
            name = other
    reason = f"output of {name!r}, the last layer with more than one site (the model has no global average pooling)"
    grid = token_grid(tensor.shape[1], input_sizes) if tensor.ndim == 3 else None
    if grid is not None:  # tokens: shown on the input's patch grid
        return FeatureSource(CapturePoint(name), Layout.parse("NHWC"), tokens_to_grid(*grid), reason=reason)
    return FeatureSource(CapturePoint(name), Layout.parse(CHANNELS_FIRST.get(tensor.ndim, "NCHW")), reason=reason)


def tokens_to_grid(height: int, width: int, prefix_tokens: int = 1) -> Callable[[Any], Any]:
    """A ``feature_transform`` for token features ``(N, L, C)``: drop the ``prefix_tokens`` (class /
    register tokens) and fold the rest into a ``(N, height, width, C)`` grid (layout ``NHWC``)."""

    def transform(tokens: Any) -> Any:
        n, length, channels = tokens.shape
        if length - prefix_tokens != height * width:
            raise ValueError(f"{length} tokens minus {prefix_tokens} prefix token(s) do not fill a "
                             f"{height}x{width} grid")
        return tokens[:, prefix_tokens:].reshape(n, height, width, channels)

    transform.__qualname__ = f"tokens_to_grid({height}, {width}, prefix_tokens={prefix_tokens})"
    return transform
