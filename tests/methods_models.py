"""Tiny models and hand-written helpers shared by the tests of the methods in plugins/methods/."""

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class Attention(nn.Module):
    def __init__(self, dim, heads, fused=False):
        super().__init__()
        self.heads, self.fused = heads, fused
        self.qkv = nn.Linear(dim, 3 * dim)
        self.softmax = nn.Softmax(dim=-1)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = self.softmax(q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, c))


class Block(nn.Module):
    def __init__(self, dim, heads, fused=False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, fused)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """4x4 patches of a 16x16 image (a 4 x 4 grid), a class token, 3 blocks, head on the class token."""

    def __init__(self, dim=16, heads=2, depth=3, classes=5, fused=False):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, heads, fused) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


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
