"""camkit's randomisation metrics against Quantus 0.6 on the same model, inputs and maps (camkit's Grad-CAM
as Quantus's explain_func). The model randomisation is deterministic (Quantus's rule: torch.manual_seed(seed
+ 1) before each layer's reset_parameters, under convention="quantus"), so values agree per sample to 1e-5;
Smooth MPRT gets Quantus's noise draws injected."""

import numpy as np
import pytest
import torch

from camkit_plugins.metrics.quantus_interop import explain_func
from quantus_support import import_quantus
from reexplain_support import images, make_batch, metric, tiny_cnn


@pytest.fixture(scope="module")
def quantus():
    return import_quantus()


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn()
    x = images()
    return model, x, make_batch(model, x)


def call(quantus_metric, model, x, batch):
    return quantus_metric(model=model, x_batch=x.numpy(), y_batch=batch.targets.numpy(), explain_func=explain_func,
                          explain_func_kwargs={"method": "gradcam"}, device="cpu")


def test_mprt_layers_equal_quantus(quantus, setup):
    model, x, batch = setup
    scores = call(quantus.MPRT(seed=42, disable_warnings=True), model, x, batch)
    values = metric("mprt", seed=42, convention="quantus").evaluate(batch)
    names = values.labels["correlation"]
    assert names == [name for name in scores if name != "original"]  # Quantus's layers, top down, BN included
    assert names == ["7", "3", "1", "0"]
    expected = np.array([scores[name] for name in names]).T
    np.testing.assert_allclose(values.values["correlation"].numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("order", ["bottom_up", "independent"])
def test_mprt_orders_equal_quantus(quantus, setup, order):
    model, x, batch = setup
    scores = call(quantus.MPRT(seed=3, layer_order=order, disable_warnings=True), model, x, batch)
    values = metric("mprt", seed=3, layer_order=order, convention="quantus").evaluate(batch)
    expected = np.array([scores[name] for name in values.labels["correlation"]]).T
    np.testing.assert_allclose(values.values["correlation"].numpy(), expected, rtol=1e-5, atol=1e-7)


def test_mprt_average_includes_the_original_in_quantus_only(quantus, setup):
    """Quantus's fault: its average skips a key "orig" that does not exist, so the original-vs-original
    score (1 for a deterministic method) is averaged in. camkit averages the randomised layers only."""
    model, x, batch = setup
    expected = np.asarray(call(quantus.MPRT(seed=42, return_average_correlation=True, disable_warnings=True),
                               model, x, batch))
    quantus_like = metric("mprt", seed=42, convention="quantus").evaluate(batch).values
    np.testing.assert_allclose(quantus_like["average_correlation"].numpy(), expected, rtol=1e-5)
    curve = quantus_like["correlation"].numpy()
    np.testing.assert_allclose(expected, (1.0 + curve.sum(axis=1)) / (curve.shape[1] + 1), rtol=1e-5)
    camkit_average = metric("mprt", seed=42, convention="quantus").evaluate(batch).values["correlation"].mean(1)
    assert np.all(np.abs(camkit_average.numpy() - expected) > 1e-3)  # the difference is visible
    ours = metric("mprt", seed=42).evaluate(batch).values  # camkit's own per-layer seeds: its own mean
    np.testing.assert_allclose(ours["average_correlation"].numpy(), ours["correlation"].numpy().mean(axis=1))


def test_efficient_mprt_equals_quantus(quantus, setup):
    model, x, batch = setup
    expected = np.asarray(call(quantus.EfficientMPRT(seed=42, disable_warnings=True), model, x, batch))
    got = metric("efficient_mprt", seed=42, convention="quantus").evaluate(batch).values["efficient_mprt"]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_random_logit_equals_quantus_under_its_convention(quantus, setup):
    model, x, batch = setup
    expected = np.asarray(call(quantus.RandomLogit(num_classes=3, seed=42, disable_warnings=True), model, x, batch))
    got = metric("random_logit", num_classes=3, seed=42, convention="quantus").evaluate(batch).values["random_logit"]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)


def test_smooth_mprt_equals_quantus_with_the_same_noise(quantus, setup, monkeypatch):
    """Quantus's SmoothMPRT calls quantus.explain (never the explain_func it is given) and draws fresh noise
    per call; here quantus.explain is camkit's adapter and its noise cycles through one bank, which camkit
    gets through its noise hook (camkit reuses the same draws for every model)."""
    model, x, batch = setup
    nr_samples = 3
    bank = [np.random.default_rng(k).standard_normal(x.shape) for k in range(nr_samples - 1)]
    calls = []

    def randn(*shape):
        calls.append(1)
        return bank[(len(calls) - 1) % (nr_samples - 1)]

    monkeypatch.setattr(quantus, "explain", explain_func)
    monkeypatch.setattr(np.random, "randn", randn)
    scores = quantus.SmoothMPRT(seed=42, nr_samples=nr_samples, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=batch.targets.numpy(), explain_func=explain_func,
        explain_func_kwargs={"method": "gradcam"}, device="cpu")
    ours = metric("smooth_mprt", seed=42, nr_samples=nr_samples, convention="quantus")
    ours.noise = lambda batch, draw, generators, shape: torch.from_numpy(bank[draw]).float()
    values = ours.evaluate(batch)
    expected = np.array([scores[name] for name in values.labels["correlation"]]).T
    np.testing.assert_allclose(values.values["correlation"].numpy(), expected, rtol=1e-5, atol=1e-7)
