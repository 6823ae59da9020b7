"""Classifier accuracy over batches, shared by the training commands of the plugins.

Imports no torch at module level (importing camkit stays torch-free)."""

from __future__ import annotations

from typing import Any, Iterable


def count_correct(model: Any, batches: Iterable[Any], device: Any = None) -> tuple[int, int]:
    """``(correct, seen)``: top-1 predictions of ``model`` that match the labels, over ``batches`` of
    ``{"input": tensor, "label": tensor}`` (inputs moved to ``device`` when given, labels compared on
    the CPU). Runs without autograd in eval mode, restoring each submodule's own train/eval flag."""
    import torch

    from camkit.capture import evaluation_mode

    correct = seen = 0
    with evaluation_mode(model), torch.no_grad():
        for batch in batches:
            inputs = batch["input"] if device is None else batch["input"].to(device)
            correct += int((model(inputs).argmax(1).cpu() == batch["label"].cpu()).sum())
            seen += len(batch["label"])
    return correct, seen
