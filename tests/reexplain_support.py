"""Small models and batches for the re-explaining metric tests (robustness, randomisation, axiomatic)."""

import torch
import torch.nn as nn

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch


def tiny_cnn(seed=0, classes=3, padding=1):
    """conv-BN-ReLU-conv-ReLU-GAP-linear on 3-channel images, eval mode, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=padding), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, padding=padding), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, classes)).eval()


def tiny_signal_net(seed=0, classes=3):
    """A 1-D CNN on (N, C=2, L) signals."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(2, 4, 5, padding=2), nn.ReLU(), nn.Conv1d(4, 5, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(5, classes)).eval()


def images(n=4, size=16, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def method_explain(method="gradcam", **options):
    """``batch.explain`` for a camkit method (as the bench builds it)."""
    def explain(model, inputs, targets):
        return camkit.explain(model, inputs, method, targets=targets, **options).maps
    return explain


def make_batch(model, inputs, layout="NCHW", letters="NHW", method="gradcam", indices=None, seed=0, targets=None,
               chunk_size=256, feature_layout=None, **options):
    """An EvalBatch whose maps and ``explain`` come from ``method``; ``layout``: the inputs' layout,
    ``feature_layout``: the explained features' (``camkit.explain``'s ``layout``), other options go to
    ``camkit.explain``."""
    if feature_layout is not None:
        options["layout"] = feature_layout
    explain = method_explain(method, **options)
    with torch.no_grad():
        predicted = model(inputs).argmax(dim=1)
    targets = predicted if targets is None else targets
    maps = explain(model, inputs, targets)
    indices = torch.arange(inputs.shape[0]) if indices is None else torch.as_tensor(indices)
    return EvalBatch(model=model, inputs=inputs, input_layout=Layout.parse(layout), labels=targets, targets=targets,
                     maps=maps, map_letters=letters, indices=indices, explain=explain, seed=seed,
                     chunk_size=chunk_size, predictions=predicted)


def split(batch, i):
    """Sample ``i`` of ``batch`` as a batch of one (same global index and seed)."""
    return EvalBatch(model=batch.model, inputs=batch.inputs[i:i + 1], input_layout=batch.input_layout,
                     labels=batch.labels[i:i + 1], targets=batch.targets[i:i + 1], maps=batch.maps[i:i + 1],
                     map_letters=batch.map_letters, indices=batch.indices[i:i + 1], explain=batch.explain,
                     seed=batch.seed, chunk_size=batch.chunk_size, predictions=batch.predictions[i:i + 1])


def metric(name, **options):
    return camkit.lookup("metrics", name)(**options)
