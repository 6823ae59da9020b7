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
distillation, register tokens) are found from the token count and the input's aspect ratio; video tokens
fold into a (T', H', W') volume (``tokens_to_volume``). CAM does not apply to such a head (it reads a
token, not pooled features): the source then has no classifier and says why.

Dense-prediction models (an ``(N, classes, *sites)`` output from a per-pixel convolution, e.g. U-Net,
Segformer, DeepLab) get what that classifier reads. A 1x1 convolution mapping pooled-to-be features to
exactly the class count before global pooling (S3D, SqueezeNet-like heads) is the classifier: the
features are its input (through any window average pooling before it).

Only tensors on the path from the **primary input** to the **scored output** are candidates (the trace
follows every torch function call's inputs and outputs): a two-tower model's other tower, a box head
that the class scores do not read, are never chosen.
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
    no_classifier: str = ""  # why CAM does not apply to this head, when it is known


@dataclass
class _Call:
    order: int
    name: str
    module: Any
    first_input: Any
    input_version: int = -1
    hands_back_first_input: bool = False  # returned its first input unchanged (same tensor, same version)
    output: Any = None  # its first output tensor
    other_tokens: tuple[int, ...] = ()  # token counts of its other (N, L, C) tensor arguments (cross-attention)
    grid_hints: tuple[tuple[int, ...], ...] = ()  # tuples of 2-3 ints among its arguments (MViT's (T, H, W))


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
    result: Any = None  # what the forward returned
    parents: dict[int, set[int]] = field(default_factory=dict)  # tensor node -> nodes it was computed from
    from_primary: set[int] = field(default_factory=set)  # nodes of tensors computed from the primary input
    primary: Any = None
    # tensor nodes: id -> (weak reference, serial); a dead tensor's id may be reused, its serial never is, so
    # intermediate tensors are freed as in any forward
    nodes: dict[int, tuple[Any, int]] = field(default_factory=dict)
    serials: Any = field(default_factory=itertools.count)
    _upstream: set[int] | None = None

    def node(self, tensor: Any) -> int:
        """The serial of ``tensor`` in the lineage graph (a new one for a tensor not seen before)."""
        import weakref

        entry = self.nodes.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            entry = (weakref.ref(tensor), next(self.serials))
            self.nodes[id(tensor)] = entry
        return entry[1]

    def scored(self) -> Any:
        from camkit.adapters import select_output

        return select_output(self.result)

    def upstream(self) -> set[int] | None:
        """Ids of the tensors the scored output was computed from (None: the output is no tensor)."""
        import torch

        if self._upstream is None:
            scored = self.scored()
            if not isinstance(scored, torch.Tensor):
                return None
            found, todo = {self.node(scored)}, [self.node(scored)]
            while todo:
                for parent in self.parents.get(todo.pop(), ()):
                    if parent not in found:
                        found.add(parent)
                        todo.append(parent)
            self._upstream = found
        return self._upstream

    def from_input(self, tensor: Any) -> bool:
        """Whether ``tensor`` was computed from the primary input (learned queries were not: DETR's decoder)."""
        return tensor is not None and (self.primary is None or self.node(tensor) in self.from_primary)

    def on_path(self, tensor: Any) -> bool:
        """Whether ``tensor`` lies between the primary input and the scored output."""
        upstream = self.upstream()
        node = self.node(tensor)
        return (upstream is None or node in upstream) and (self.primary is None or node in self.from_primary)


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


def _tensors(value: Any) -> list[Any]:
    """The tensors in ``value`` (nested tuples, lists and dicts)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _int_tuples(values: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(v) for v in values if isinstance(v, (tuple, list)) and 2 <= len(v) <= 3
                 and all(isinstance(i, int) and not isinstance(i, bool) for i in v))


def record_forward(model: Any, run: Callable[[], Any], primary: Any = None) -> _Trace:
    """Run ``run()`` (one forward of ``model``) recording module calls, global pooling calls and which
    tensor was computed from which (the lineage of every torch function call), from ``primary`` on."""
    import torch
    from torch.overrides import TorchFunctionMode

    trace = _Trace(primary=primary)
    if primary is not None:
        trace.from_primary.add(trace.node(primary))
    counter = itertools.count()
    function_calls: dict[str, int] = {}
    open_calls: list[_Call] = []

    def before(name: str, module: Any, args: Any, kwargs: Any) -> None:
        trace.running.append((name, module))
        trace.counts[name] = trace.counts.get(name, 0) + 1
        first = _first_tensor(args, kwargs)
        others = tuple(int(t.shape[1]) for t in _tensors((args, kwargs)) if t is not first and t.ndim == 3)
        open_calls.append(_Call(next(counter), name, module, first, -2 if first is None else _version(first),
                                other_tokens=others, grid_hints=_int_tuples((*args, *kwargs.values()))))
        trace.calls.append(open_calls[-1])

    def after(name: str, module: Any, args: Any, output: Any) -> None:
        trace.running.pop()
        call = open_calls.pop()
        first = _first_tensor(output if isinstance(output, (tuple, list)) else (output,), {})
        call.hands_back_first_input = first is not None and first is call.first_input \
            and _version(first) == call.input_version
        call.output = first
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
            result = func(*args, **kwargs)
            _follow(trace, _tensors((args, kwargs)), _tensors(result))
            return result

    with each_module_call(model, before, after), torch.no_grad(), evaluation_mode(model), Watch():
        trace.result = run()  # no_grad, not inference_mode: inference tensors have no version counter
    return trace


def _follow(trace: _Trace, inputs: list[Any], outputs: list[Any]) -> None:
    """Note that ``outputs`` were computed from ``inputs`` (an in-place call adds to what it had)."""
    if not outputs:
        return
    nodes = {trace.node(t) for t in inputs}
    tainted = bool(nodes & trace.from_primary)
    for out in outputs:
        node = trace.node(out)
        trace.parents.setdefault(node, set()).update(nodes - {node})
        if tainted:
            trace.from_primary.add(node)


def trace_features(model: Any, run: Callable[[], Any], input_sizes: dict[str, int] | None = None,
                   primary: Any = None) -> FeatureSource:
    """Find the features of ``model`` by watching ``run()``, one forward pass on an example input.

    ``input_sizes``: the primary input's axis sizes (``{"H": 224, "W": 224}``, ``{"T": 16, "H": ..}``),
    used to fold tokens into a grid. ``primary``: the primary input tensor ``run`` passes; only tensors
    computed from it (and that the scored output is computed from) are candidates. Raises ``ValueError``
    when no candidate lies on that path, or the model has neither global pooling, nor transformer blocks,
    nor any layer with more than one site."""
    trace = record_forward(model, run, primary)
    sizes = input_sizes or {}
    dense = _from_dense_head(trace)
    if dense is not None:
        return dense
    pools = [pool for pool in trace.pools if trace.on_path(pool.tensor)]
    if pools:
        return _from_pooling(trace, pools[-1], sizes)
    tokens = _from_token_blocks(model, trace, sizes)
    if tokens is not None:
        return tokens
    return _last_spatial_output(model, trace, sizes)


def _producer(trace: _Trace, tensor: Any) -> str | None:
    """The outermost module (run once) whose output is ``tensor`` as it is now, not counting modules that
    hand their input back (Dropout, Identity in eval mode)."""
    names = [call.name for call in trace.calls if call.output is tensor and call.name and not
             call.hands_back_first_input and trace.counts.get(call.name) == 1]
    version = _version(tensor)
    unchanged = [name for order, name, out, v in trace.outputs if out is tensor and v == version]
    names = [name for name in names if name in unchanged]
    return max(names, key=lambda name: trace.finished[name]) if names else None


def _feature_point(trace: _Trace, tensor: Any, call: _Call) -> CapturePoint:
    """``tensor`` (the first input of ``call``) as a capture point: its producer's output, else the input."""
    producer = _producer(trace, tensor)
    return CapturePoint(producer) if producer else CapturePoint(call.name, "input")


def _is_pointwise_conv(module: Any) -> bool:
    import torch.nn as nn

    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in module.kernel_size) \
        and module.groups == 1


def _from_dense_head(trace: _Trace) -> FeatureSource | None:
    """A dense-prediction output ``(N, classes, *sites)``: the input of the last convolution giving
    ``classes`` channels that the output is computed from (the per-pixel classifier)."""
    import torch
    import torch.nn as nn

    scored = trace.scored()
    if not isinstance(scored, torch.Tensor) or scored.ndim < 3 or scored[0, 0].numel() <= 1:
        return None
    heads = [call for call in trace.calls if isinstance(call.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
             and call.module.out_channels == scored.shape[1] and call.output is not None
             and call.output.ndim == scored.ndim and call.output[0, 0].numel() > 1 and trace.on_path(call.output)
             and trace.counts.get(call.name) == 1]
    if not heads:
        return None
    head = heads[-1]
    point = _feature_point(trace, head.first_input, head)
    return FeatureSource(point, Layout.parse(CHANNELS_FIRST[scored.ndim]),
                         reason=f"{_where(point)}, what the per-pixel classifier {head.name!r} reads (the output is "
                                f"a dense prediction of {scored.shape[1]} classes)")


def _where(point: CapturePoint) -> str:
    return f"input of {point.module!r}" if point.kind == "input" else f"output of {point.module!r}"


def _pointwise_classifier(trace: _Trace, pool: _Pool, channels: int) -> FeatureSource | None:
    """A 1x1 convolution giving exactly the class count right before global pooling is the classifier
    (S3D): the features are its input, followed back through window average pooling (AvgPool3d)."""
    import torch
    import torch.nn as nn

    scored = trace.scored()
    if not isinstance(scored, torch.Tensor) or scored.ndim != 2 or scored.shape[1] != channels:
        return None
    convs = [call for call in trace.calls if call.output is pool.tensor and _is_pointwise_conv(call.module)
             and call.module.out_channels == channels]
    if not convs:
        return None
    conv = convs[-1]
    tensor, reader = conv.first_input, conv
    while True:
        feeding = [call for call in trace.calls if call.output is tensor and not call.hands_back_first_input]
        pools = [call for call in feeding if isinstance(call.module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d))]
        if not pools:
            break
        tensor, reader = pools[-1].first_input, pools[-1]
    point = _feature_point(trace, tensor, reader)
    module = conv.module
    return FeatureSource(point, Layout.parse(CHANNELS_FIRST[tensor.ndim]), classifier=module.weight.flatten(1),
                         classifier_bias=module.bias,
                         reason=f"{_where(point)}: the 1x1 convolution {conv.name!r} maps it to the {channels} "
                                f"classes before global pooling, so it is the classifier")


def _from_pooling(trace: _Trace, pool: _Pool, input_sizes: dict[str, int] | None) -> FeatureSource:
    layout = Layout.parse(pool.layout)
    pointwise = _pointwise_classifier(trace, pool, pool.tensor.shape[layout.channel_axis])
    if pointwise is not None:
        return pointwise
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
        folded = fold_tokens(pool.tensor.shape[1], input_sizes)
        if folded is not None and folded[2] == 0:
            transform, layout = folded[0], folded[1]
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


def token_volume(length: int, input_sizes: dict[str, int],
                 hints: tuple[tuple[int, ...], ...] = ()) -> tuple[int, int, int, int] | None:
    """``(frames, height, width, prefix_tokens)`` for ``length`` video tokens of a clip of ``input_sizes``
    (T, H, W): a ``(T', H', W')`` hint among the block's arguments (MViT passes it) when one fills the
    tokens, else the fewest prefix tokens, then the most frames (temporal strides are small) with the
    picture's aspect ratio and no more frames, rows or columns than the clip has."""
    frames, height, width = (input_sizes.get(letter) for letter in "THW")
    if not frames or not height or not width:
        return None
    for prefix in range(0, min(MAX_PREFIX_TOKENS, length - 1) + 1):
        for hint in hints:
            if len(hint) == 3 and hint[0] * hint[1] * hint[2] == length - prefix:
                return hint[0], hint[1], hint[2], prefix
    for prefix in range(0, min(MAX_PREFIX_TOKENS, length - 1) + 1):
        grid = length - prefix
        for t in range(min(frames, grid), 0, -1):
            if grid % t:
                continue
            area = grid // t
            for rows in range(1, min(area, height) + 1):
                if area % rows == 0 and rows * width == (area // rows) * height and area // rows <= width:
                    return t, rows, area // rows, prefix
    return None


def fold_tokens(length: int, input_sizes: dict[str, int], hints: tuple[tuple[int, ...], ...] = ()
                ) -> tuple[Callable[[Any], Any], Layout, int, str] | None:
    """``(feature_transform, layout, prefix_tokens, description)`` folding ``length`` tokens onto the
    input's grid: a picture's (H', W') grid, or a clip's (T', H', W') volume when the input has a T axis."""
    if "T" in input_sizes:
        volume = token_volume(length, input_sizes, hints)
        if volume is None:
            return None
        t, h, w, prefix = volume
        return tokens_to_volume(t, h, w, prefix), Layout.parse("NTHWC"), prefix, f"{t}x{h}x{w} video tokens"
    grid = token_grid(length, input_sizes)
    if grid is None:
        return None
    rows, cols, prefix = grid
    return tokens_to_grid(rows, cols, prefix), Layout.parse("NHWC"), prefix, f"{rows}x{cols} patch tokens"


def _is_block(call: _Call) -> bool:
    """A transformer block: a composite module taking (N, L, C) tokens and changing them, not a
    cross-attention block (its tokens are queries attending to another token sequence, e.g. DETR's decoder)."""
    x = call.first_input
    return x is not None and x.ndim == 3 and bool(list(call.module.children())) and not call.hands_back_first_input \
        and not any(other != x.shape[1] and other > 1 for other in call.other_tokens)


def _from_token_blocks(model: Any, trace: _Trace, input_sizes: dict[str, int]) -> FeatureSource | None:
    """The input of the last of a run of identical transformer blocks taking (N, L, C) tokens (and
    changing them: a block that hands its first input back works on other tokens). Leaf layers (an MLP's
    Linear layers), cross-attention blocks, tokens off the primary input's path and runs whose first block
    takes tokens not computed from the input (DETR's object queries, whatever their count) are no such
    blocks."""
    import torch.nn as nn

    first_call: dict[int, _Call] = {}
    for call in trace.calls:
        first_call.setdefault(id(call.module), call)
    best: tuple[int, _Call, Any] | None = None
    for container in model.modules():  # containers need not run themselves (a ModuleList never does)
        if not isinstance(container, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(container.children())
        if len(children) < 2 or len({type(child) for child in children}) != 1:
            continue
        block, first = first_call.get(id(children[-1])), first_call.get(id(children[0]))
        if block is None or trace.counts.get(block.name) != 1 or not _is_block(block) \
                or not trace.on_path(block.first_input) or first is None or not trace.from_input(first.first_input):
            continue  # a block handing its first input back unchanged works on other tokens (CoaT's parallel ones)
        folded = fold_tokens(block.first_input.shape[1], input_sizes, block.grid_hints)
        if folded is not None and (best is None or trace.finished[block.name] > best[0]):
            best = (trace.finished[block.name], block, folded)
    if best is None:
        return None
    _, block, (transform, layout, prefix, grid) = best
    reason = f"input of the last transformer block {block.name!r}: {grid} after {prefix} prefix token(s)"
    if prefix:  # the head reads the class token: CAM's class evidence (pooled features) does not exist
        return FeatureSource(CapturePoint(block.name, "input"), layout, transform, reason=reason,
                             no_classifier=f"CAM does not apply: the head of {type(model).__name__} reads its class "
                                           f"token (not pooled features), so no classifier row weighs these "
                                           f"features; use a gradient method such as 'gradcam'")
    classifier, bias = _classifier_after(trace, best[0], block.first_input.shape[2])
    return FeatureSource(CapturePoint(block.name, "input"), layout, transform, classifier, bias, reason)


def _last_spatial_output(model: Any, trace: _Trace, input_sizes: dict[str, int]) -> FeatureSource:
    """No global pooling and no token blocks (e.g. flatten + linear heads): the outermost module giving
    the last tensor with more than one site, as Grad-CAM users pick by hand."""
    spatial = [(order, name, tensor) for order, name, tensor, _ in trace.outputs
               if name and tensor.ndim >= 3 and tensor[0, 0].numel() > 1 and trace.counts.get(name) == 1]
    if spatial and not any(trace.on_path(tensor) for _, _, tensor in spatial):
        raise ValueError(f"could not find the features of {type(model).__name__}: no layer lies on the path from the "
                         f"primary input to the scored output (for a model of several inputs, such as CLIP's image "
                         f"and text towers, pass primary_input=... naming the input the scored output depends on, "
                         f"or output=... picking an output computed from it; or pass layer=...)")
    spatial = [item for item in spatial if trace.on_path(item[2])]
    if not spatial:
        raise ValueError(f"could not find the features of {type(model).__name__}: no global average pooling, no "
                         f"transformer blocks and no layer with more than one site ran in the forward pass; "
                         f"pass layer=... (a module name, 'name:input' for the input of a module)")
    _, name, tensor = spatial[-1]
    for order, other, same, _ in trace.outputs:  # modules finishing later with the same tensor are parents
        if same is tensor and order > spatial[-1][0] and other and trace.counts.get(other) == 1:
            name = other
    reason = f"output of {name!r}, the last layer with more than one site (the model has no global average pooling)"
    folded = fold_tokens(tensor.shape[1], input_sizes) if tensor.ndim == 3 else None
    if folded is not None:  # tokens: shown on the input's patch grid
        return FeatureSource(CapturePoint(name), folded[1], folded[0], reason=reason)
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


def tokens_to_volume(frames: int, height: int, width: int, prefix_tokens: int = 0) -> Callable[[Any], Any]:
    """A ``feature_transform`` for video tokens ``(N, L, C)`` (frame-major, as MViT and VideoMAE order
    them): drop the ``prefix_tokens`` and fold the rest into ``(N, frames, height, width, C)`` (``NTHWC``)."""

    def transform(tokens: Any) -> Any:
        n, length, channels = tokens.shape
        if length - prefix_tokens != frames * height * width:
            raise ValueError(f"{length} tokens minus {prefix_tokens} prefix token(s) do not fill a "
                             f"{frames}x{height}x{width} volume")
        return tokens[:, prefix_tokens:].reshape(n, frames, height, width, channels)

    transform.__qualname__ = f"tokens_to_volume({frames}, {height}, {width}, prefix_tokens={prefix_tokens})"
    return transform


def input_layout_for(model: Any, x: Any, feature_layout: Layout | None = None) -> Layout:
    """The layout of a model's primary input ``x`` when none is given: a waveform ``(N, L)`` has no
    channel axis (``NL``); a clip ``(N, T, C, H, W)`` for Hugging Face video models (their config has
    ``num_frames`` and ``x``'s third axis is ``num_channels``: VideoMAE, TimeSformer, ViViT); otherwise
    channels first with the sites of ``feature_layout`` (or ``NCTHW`` for a rank-5 clip)."""
    from camkit.layout import default_input_layout

    if x.ndim == 2:
        return Layout.parse("NL", channels=False)
    config = getattr(model, "config", None)
    if x.ndim == 5 and getattr(config, "num_frames", None) and x.shape[2] == getattr(config, "num_channels", -1):
        return Layout.parse("NTCHW")
    if feature_layout is not None:
        return default_input_layout(feature_layout)
    return Layout.parse({3: "NCL", 4: "NCHW", 5: "NCTHW"}.get(x.ndim, "NC" + "L" * max(x.ndim - 2, 0)))


def input_sizes_for(model: Any, x: Any) -> dict[str, int]:
    """The primary input's continuous axis sizes (``{"H": 224, "W": 224}``, ``{"T": 16, "H": .., "W": ..}``,
    ``{"L": 16000}``) for folding tokens, by ``input_layout_for``."""
    layout = input_layout_for(model, x)
    return {letter: int(size) for letter, size in zip(layout.letters, x.shape) if letter in "THWL"}
