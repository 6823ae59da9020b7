"""Tiny models and hand-written helpers shared by the tests of the methods in plugins/methods/."""

import torch
import torch.nn as nn

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


class GapNet(nn.Module):
    """conv features (``body``) -> global average pool -> linear, in 1, 2 or 3 site dimensions."""

    def __init__(self, dims: int = 2, classes: int = 4, channels: int = 6, in_channels: int = 3) -> None:
        super().__init__()
        conv = CONV[dims]
        self.body = nn.Sequential(conv(in_channels, channels, 3, padding=1), nn.ReLU(),
                                  conv(channels, channels, 3, padding=1), nn.ReLU())
        self.pool = POOL[dims](1)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.pool(self.body(x)).flatten(1))


class DeepHead(nn.Module):
    """A non-linear head after the target layer ``features``, so methods differ from CAM."""

    def __init__(self, dims: int = 2, classes: int = 3) -> None:
        super().__init__()
        conv = CONV[dims]
        self.features = nn.Sequential(conv(3, 5, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(conv(5, 5, 1), nn.Tanh(), POOL[dims](1), nn.Flatten(), nn.Linear(5, classes))

    def forward(self, x):
        return self.head(self.features(x))


def features_and_gradients(model, layer, x, targets):
    """The layer's output and d logits[target] / d output by plain autograd (the oracle)."""
    seen = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("f", o))
    try:
        with torch.enable_grad():
            out = model(x)
            g = torch.autograd.grad(out.gather(1, targets[:, None]).sum(), seen["f"])[0]
    finally:
        handle.remove()
    return seen["f"].detach(), g, out.detach()


def normalise(m):
    """ReLU and per-map min-max over all but the first axis (constant maps become zeros)."""
    m = m.clamp_min(0)
    flat = m.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return torch.where(hi > lo, (flat - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(flat)).view_as(m)


def numpy_projection_maps(weighted):
    """(N, C, H, W) weighted features -> (N, H, W) projections on each sample's first right-singular
    vector (numpy SVD of the sites x channels matrix, not centred), signed to sum positive."""
    import numpy as np

    maps = []
    for sample in weighted:
        p = sample.reshape(sample.shape[0], -1).T.double().numpy()
        projection = p @ np.linalg.svd(p)[2][0]
        maps.append(torch.from_numpy(projection * np.sign(projection.sum())).float().view(sample.shape[1:]))
    return torch.stack(maps)
