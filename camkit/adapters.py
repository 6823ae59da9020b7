"""Model adapters: whatever a model takes and returns, the explain pipeline sees one batch and one output.

Inputs may be one tensor, a tuple / list of positional tensors, or a mapping of keyword inputs
(Hugging Face ``{"pixel_values": x}``); the **primary** input (the first tensor unless told) defines the
batch and the size maps are resampled to. Outputs may be a tensor, a ``ModelOutput`` / dataclass with
``.logits``, a dict (``"logits"``, torchvision segmentation's ``"out"``) or a tuple / list (the first
tensor, also of nested tuples); ``output=`` (a key, attribute, index or callable) picks anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

OUTPUT_KEYS = ("logits", "out")


@dataclass(frozen=True)
class ModelInputs:
    """One batch of model inputs. ``primary``: the index (positional) or key (keyword) of the tensor
    whose first axis is the batch and whose size maps are resampled to."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    primary: int | str

    @classmethod
    def of(cls, inputs: Any, primary: int | str | None = None) -> "ModelInputs":
        import torch

        if isinstance(inputs, torch.Tensor):
            batch = cls((inputs,), {}, 0)
        elif isinstance(inputs, (tuple, list)):
            batch = cls(tuple(inputs), {}, 0)
        elif isinstance(inputs, Mapping):
            batch = cls((), dict(inputs), next(iter(inputs), ""))
        else:
            raise TypeError(f"inputs must be a torch.Tensor batch, a tuple/list of tensors or a dict of keyword "
                            f"inputs, got {type(inputs).__name__}")
        tensors = batch.named_tensors()
        if primary is None:
            if not tensors:
                raise TypeError("inputs hold no tensor: nothing to explain")
            primary = next(iter(tensors))
        if primary not in tensors:
            raise ValueError(f"primary input {primary!r} is not a tensor among the inputs "
                             f"({', '.join(map(repr, tensors)) or 'none'})")
        batch = cls(batch.args, batch.kwargs, primary)
        batch.validate()
        return batch

    def named_tensors(self) -> dict[int | str, Any]:
        import torch

        named: dict[int | str, Any] = {i: a for i, a in enumerate(self.args) if isinstance(a, torch.Tensor)}
        named.update({k: v for k, v in self.kwargs.items() if isinstance(v, torch.Tensor)})
        return named

    @property
    def tensor(self) -> Any:
        """The primary input."""
        return self.args[self.primary] if isinstance(self.primary, int) else self.kwargs[self.primary]

    @property
    def batch_size(self) -> int:
        return int(self.tensor.shape[0])

    def validate(self) -> None:
        from camkit.validation import require_finite

        x = self.tensor
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"inputs of shape {tuple(x.shape)} are not a non-empty batch")
        for name, tensor in self.named_tensors().items():
            if tensor.is_floating_point():
                require_finite(tensor, "the input batch" if len(self.named_tensors()) == 1 else f"input {name!r}")
            if tensor.ndim >= 1 and tensor.shape[0] != x.shape[0]:
                raise ValueError(f"input {name!r} has batch size {tensor.shape[0]} but the primary input "
                                 f"{self.primary!r} has {x.shape[0]}: every input tensor needs the batch on its "
                                 f"first axis")

    def __call__(self, model: Any) -> Any:
        return model(*self.args, **self.kwargs)

    def select(self, index: Any) -> "ModelInputs":
        """Samples ``index`` (a slice or index tensor) of every batched input."""
        def pick(value: Any) -> Any:
            return value[index] if _batched(value, self.batch_size) else value

        return ModelInputs(tuple(pick(a) for a in self.args), {k: pick(v) for k, v in self.kwargs.items()},
                           self.primary)

    def with_primary(self, tensor: Any, owners: Any = None) -> "ModelInputs":
        """``tensor`` as the primary input; every other batched input follows ``owners`` (the sample each
        new row comes from; by default the same rows, or sample 0 for a batch of one)."""
        import torch

        if owners is None and tensor.shape[0] != self.batch_size:
            if tensor.shape[0] != 1 and len(self.named_tensors()) > 1:
                raise ValueError("a batch of another size needs owners= to pair it with the other inputs")
            owners = torch.zeros(tensor.shape[0], dtype=torch.long, device=tensor.device)
        moved = self if owners is None else self.select(owners)
        if isinstance(self.primary, int):
            args = list(moved.args)
            args[self.primary] = tensor
            return ModelInputs(tuple(args), moved.kwargs, self.primary)
        return ModelInputs(moved.args, {**moved.kwargs, self.primary: tensor}, self.primary)


def _batched(value: Any, batch_size: int) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch_size


def select_output(output: Any, selector: Any = None) -> Any:
    """The tensor of ``output`` that targets score: ``selector`` (key, attribute, index or callable), else
    the tensor itself, ``.logits``, ``["logits"]`` / ``["out"]``, or the first tensor of a tuple / list.
    An output with no tensor by these rules (e.g. a detector's list of dicts) is returned as it is."""
    import torch

    if selector is not None:
        return _pick(output, selector)
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in OUTPUT_KEYS:
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
    elif isinstance(getattr(output, "logits", None), torch.Tensor):
        return output.logits
    first = output
    while isinstance(first, (tuple, list)) and first:  # nested tuples: ((predictions, prototypes), extras)
        first = first[0]
    return first if isinstance(first, torch.Tensor) else output


def _pick(output: Any, selector: Any) -> Any:
    if callable(selector):
        return selector(output)
    if isinstance(selector, int) and isinstance(output, (tuple, list)):
        if not -len(output) <= selector < len(output):
            raise ValueError(f"output={selector}: the model returned a {type(output).__name__} of {len(output)}")
        return output[selector]
    if isinstance(selector, str):
        if isinstance(output, Mapping) and selector in output:
            return output[selector]
        if not isinstance(output, Mapping) and hasattr(output, selector):
            return getattr(output, selector)
        available = list(output.keys()) if isinstance(output, Mapping) else \
            [k for k in vars(output) if not k.startswith("_")] if hasattr(output, "__dict__") else []
        raise ValueError(f"output={selector!r}: the model's {type(output).__name__} has no such entry; it has "
                         f"{', '.join(map(repr, available)) or 'none'}")
    raise TypeError(f"output={selector!r} must be a key, an attribute name, an index or a callable")


def describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"a tensor of shape {tuple(shape)}" if shape is not None else f"a {type(value).__name__}"



def detached(value: Any) -> Any:
    """``value`` with every tensor detached, through lists, tuples and dicts (a detector's detections), so a
    result holds no autograd graph."""
    if hasattr(value, "detach"):
        return value.detach()
    if type(value) in (list, tuple):  # plain containers only: a ModelOutput or namedtuple stays as it is
        return type(value)(detached(item) for item in value)
    if type(value) is dict:
        return {key: detached(item) for key, item in value.items()}
    return value
