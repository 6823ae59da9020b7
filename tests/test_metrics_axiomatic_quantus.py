"""camkit's axiomatic metrics against Quantus 0.6 on the same model, inputs and maps, plus Quantus's
Completeness fault (exact float equality) on a minimal case."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch
from camkit_plugins.metrics.quantus_interop import explain_func
from quantus_support import import_quantus
from reexplain_support import images, make_batch, metric, tiny_cnn


@pytest.fixture(scope="module")
def quantus():
    return import_quantus()


def call(quantus_metric, model, x, targets, a_batch=None):
    return np.asarray(quantus_metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=a_batch,
                                     explain_func=explain_func, explain_func_kwargs={"method": "gradcam"},
                                     device="cpu"), dtype=np.float64)


class PixelSum(nn.Module):
    """Linear in the input: logit_k = sum over pixels of w_k[h, w] * (sum over channels of x)."""

    def __init__(self, size=6, classes=2):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, size, size, generator=torch.Generator().manual_seed(2)))

    def forward(self, x):
        return torch.einsum("nchw,khw->nk", x, self.weight)


def test_completeness_tolerance_where_quantus_needs_exact_equality(quantus):
    """Gradient x (input - baseline) of a linear model is complete; its float32 sum differs from
    f(x) - f(x') in the last bits, so Quantus's exact test fails where camkit's tolerance holds."""
    model = PixelSum().eval()
    x = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 0, 1])
    baseline = x.reshape(4, -1).amin(dim=1).view(4, 1, 1, 1)  # Quantus's "black"
    maps = (model.weight[targets] * (x - baseline).sum(dim=1)).detach()
    batch = EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=targets, targets=targets,
                      maps=maps, map_letters="NHW", indices=torch.arange(4), explain=None)
    expected = call(quantus.Completeness(normalise=False, disable_warnings=True), model, x, targets,
                    a_batch=maps[:, None].numpy())
    quantus_like = metric("completeness", normalise=False, convention="quantus").evaluate(batch).values
    np.testing.assert_array_equal(quantus_like["completeness"].numpy(), expected)
    ours = metric("completeness", normalise=False).evaluate(batch).values
    assert expected.sum() < 4 and ours["completeness"].tolist() == [1.0] * 4
    assert ours["completeness_gap"].abs().max() < 1e-4
    broken = metric("completeness", normalise=False).evaluate(
        EvalBatch(**{**batch.__dict__, "maps": maps * 1.01})).values  # 1% off: not complete
    assert broken["completeness"].tolist() == [0.0] * 4


def test_non_sensitivity_equals_quantus_per_element(quantus):
    model = tiny_cnn()
    x = images(n=3, size=6)
    batch = make_batch(model, x)
    expected = call(quantus.NonSensitivity(disable_warnings=True), model, x, batch.targets)
    got = metric("non_sensitivity", features="element").evaluate(batch).values["non_sensitivity"]
    np.testing.assert_array_equal(got.numpy(), expected)


def test_input_invariance_equals_quantus_under_its_convention(quantus):
    for padding in (0, 1):
        model = tiny_cnn(padding=padding)
        x = images(n=3, size=10)
        batch = make_batch(model, x)
        expected = call(quantus.InputInvariance(disable_warnings=True), model, x, batch.targets)
        got = metric("input_invariance", convention="quantus").evaluate(batch).values["input_invariance"]
        np.testing.assert_array_equal(got.numpy(), expected)


def test_non_sensitivity_groups_crash_quantus_not_camkit(quantus):
    """Quantus compares one prediction per group with one attribution per feature: any features_in_step
    other than 1 raises. camkit counts a group as without attribution when all its features are."""
    model = tiny_cnn()
    x = images(n=2, size=4)
    batch = make_batch(model, x)
    with pytest.raises(ValueError):
        call(quantus.NonSensitivity(features_in_step=4, disable_warnings=True), model, x, batch.targets)
    values = metric("non_sensitivity", features="element", features_in_step=4).evaluate(batch).values
    assert values["non_sensitivity"].shape == (2,)
