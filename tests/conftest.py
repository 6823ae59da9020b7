"""Shared fixtures: seeded, small, CPU-only unless a test is marked gpu."""

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _seed():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_gap_net(rank: int = 2, in_channels: int = 3, channels: int = 6, classes: int = 4, stride: int = 1):
    """conv -> ReLU -> global average pool -> linear, on 1D (rank 1), 2D or 3D inputs, in eval mode:
    CAM's architecture, shared by the tests instead of rebuilt in each."""
    import torch.nn as nn

    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[rank]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[rank]
    return nn.Sequential(conv(in_channels, channels, 3, padding=1, stride=stride), nn.ReLU(), pool(1), nn.Flatten(),
                         nn.Linear(channels, classes)).eval()


@pytest.fixture
def gap_net_factory():
    """``gap_net_factory(rank=2, in_channels=3, channels=6, classes=4, stride=1)``: see ``tiny_gap_net``."""
    return tiny_gap_net
