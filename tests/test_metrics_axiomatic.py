"""Axiomatic metrics on cases with a known answer: a complete linear attribution, a model that reads one
pixel (non-sensitivity counts by hand), an unpadded first layer that absorbs an input shift exactly."""

import pytest
import torch
import torch.nn as nn

from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch
from reexplain_support import images, make_batch, metric, tiny_cnn


class OnePixel(nn.Module):
    """logit_0 = gain * x[c=0, row, col], logit_1 = 0: only one element of the input matters."""

    def __init__(self, row=1, col=2, gain=10.0):
        super().__init__()
        self.row, self.col, self.gain = row, col, gain

    def forward(self, x):
        z = self.gain * x[:, 0, self.row, self.col]
        return torch.stack([z, torch.zeros_like(z)], dim=1)


class Function(nn.Module):
    """A parameter-free model computing ``function(x)``."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def fixed_batch(model, x, maps, targets, layout="NCHW", letters="NHW"):
    return EvalBatch(model=model, inputs=x, input_layout=Layout.parse(layout), labels=targets, targets=targets,
                     maps=maps, map_letters=letters, indices=torch.arange(x.shape[0]), explain=None)


def test_completeness_of_a_linear_attribution():
    weight = torch.randn(2, 5, 5, generator=torch.Generator().manual_seed(0))
    model = Function(lambda x: torch.einsum("nchw,khw->nk", x, weight))  # linear
    x = torch.rand(3, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 1])
    black = x.reshape(3, -1).amin(dim=1).view(3, 1, 1, 1)
    maps = weight[targets] * (x - black).sum(dim=1)  # gradient x (input - baseline): complete
    values = metric("completeness", normalise=False).evaluate(fixed_batch(model, x, maps, targets)).values
    assert values["completeness"].tolist() == [1.0, 1.0, 1.0]
    assert values["completeness_gap"].abs().max() < 1e-4
    zero = metric("completeness", normalise=False, perturb_baseline="zero")  # another baseline: not complete
    assert zero.evaluate(fixed_batch(model, x, maps, targets)).values["completeness"].sum() < 3


def test_non_sensitivity_counts_by_hand():
    """Only pixel (1, 2) of channel 0 moves the output. A map on that pixel alone breaks nothing; a map on
    three other sites and not on it breaks 3 + 1 rules per site feature, and per element feature the
    three sites count once per channel (2 channels) plus the pixel's channel 0."""
    model = OnePixel()
    x = torch.rand(2, 2, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.5  # black baseline = min > 0
    targets = torch.zeros(2, dtype=torch.long)
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 2] = 1.0
    maps[1, 0, 0], maps[1, 3, 3], maps[1, 2, 1] = 1.0, 0.5, 0.2
    batch = fixed_batch(model, x, maps, targets)
    assert metric("non_sensitivity").evaluate(batch).values["non_sensitivity"].tolist() == [0.0, 4.0]
    # per element, the pixel's channel 1 has attribution but does not matter: one more violation each
    per_element = metric("non_sensitivity", features="element").evaluate(batch).values["non_sensitivity"]
    assert per_element.tolist() == [1.0, 3 * 2 + 1.0]
    # groups of 4 sites (one row each): row 1 holds the pixel; a group is "without attribution" when all are
    grouped = metric("non_sensitivity", features_in_step=4).evaluate(batch).values["non_sensitivity"]
    # sample 1: rows 0, 2, 3 have attribution and no effect, row 1 has the effect and no attribution
    assert grouped.tolist() == [0.0, 4.0]
    assert metric("non_sensitivity", features_in_step=4, convention="quantus").evaluate(batch).values[
        "non_sensitivity"].tolist() == grouped.tolist()


def test_non_sensitivity_in_chunks_and_on_skeletons():
    model = OnePixel()
    x = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    maps = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.zeros(3, dtype=torch.long)
    whole = metric("non_sensitivity").evaluate(fixed_batch(model, x, maps, targets)).values["non_sensitivity"]
    chunked = EvalBatch(**{**fixed_batch(model, x, maps, targets).__dict__, "chunk_size": 5})
    assert torch.equal(metric("non_sensitivity").evaluate(chunked).values["non_sensitivity"], whole)
    clip = torch.rand(2, 3, 6, 4, 2, generator=torch.Generator().manual_seed(2))
    skeleton_model = Function(lambda c: torch.stack([c[:, 0, 2, 1].sum(dim=-1), torch.zeros(c.shape[0])], 1))
    skeleton_maps = torch.zeros(2, 6, 4)
    skeleton_maps[:, 2, 1] = 1.0  # frame 2, joint 1: the only site that matters, for both persons
    values = metric("non_sensitivity").evaluate(fixed_batch(skeleton_model, clip, skeleton_maps, targets[:2],
                                                            "NCTVM", "NTV")).values
    assert values["non_sensitivity"].tolist() == [0.0, 0.0]


def test_input_invariance_holds_exactly_without_padding():
    model = tiny_cnn(padding=0)
    batch = make_batch(model, images(n=3, size=10))
    values = metric("input_invariance").evaluate(batch).values
    assert values["input_invariance"].tolist() == [1.0, 1.0, 1.0] and values["max_difference"].max() < 1e-5
    shifted = metric("input_invariance").shifted_model(batch)
    with torch.no_grad():
        torch.testing.assert_close(shifted[0](batch.inputs - 1), model[0](batch.inputs), rtol=1e-5, atol=1e-5)
    assert all(not torch.equal(a, b) for a, b in zip(shifted[0].parameters(), model[0].parameters())
               if a.ndim == 1)  # the copy's bias moved, the user's model did not


def test_input_invariance_bias_quantus_reads_a_border_value():
    """With zero padding, Quantus takes the smallest output value of the first layer on the constant shift,
    a border value, so its bias is wrong in the interior; camkit's b - shift * sum(W) is exact there."""
    model = tiny_cnn(padding=1)
    batch = make_batch(model, images(n=2, size=8))
    exact = metric("input_invariance").shifted_model(batch)[0]
    quantus_like = metric("input_invariance", convention="quantus").shifted_model(batch)[0]
    with torch.no_grad():
        reference = model[0](batch.inputs)[..., 1:-1, 1:-1]
        torch.testing.assert_close(exact(batch.inputs - 1)[..., 1:-1, 1:-1], reference, rtol=1e-5, atol=1e-5)
        assert (quantus_like(batch.inputs - 1)[..., 1:-1, 1:-1] - reference).abs().max() > 1e-3


def test_bad_options():
    with pytest.raises(ValueError, match="perturb_baseline"):
        metric("completeness", perturb_baseline="grey")
    with pytest.raises(ValueError, match="features"):
        metric("non_sensitivity", features="pixel")
    with pytest.raises(ValueError, match="features_in_step"):
        metric("non_sensitivity", features_in_step=0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    batch = make_batch(model, images(n=2, size=4))
    with pytest.raises(ValueError, match="no bias"):
        metric("input_invariance", convention="quantus").evaluate(batch)
    values = metric("input_invariance").evaluate(batch).values  # camkit gives the copy a bias: exact, no padding
    assert values["input_invariance"].tolist() == [1.0, 1.0] and model[0].bias is None
