"""camkit's robustness metrics against Quantus 0.6 on the same inputs, maps (camkit's Grad-CAM as Quantus's
explain_func) and noise: Quantus's perturb_func is replaced by one adding a fixed bank of draws, and camkit
gets the same draws through its ``noise`` hook, so every value must agree per sample to 1e-5."""

import re

import numpy as np
import pytest
import torch

from camkit_plugins.metrics.quantus_interop import explain_func
from quantus_support import import_quantus
from reexplain_support import images, make_batch, metric, tiny_cnn

N_DRAWS = 3


@pytest.fixture(scope="module")
def quantus():
    return import_quantus()


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn()
    x = images()
    batch = make_batch(model, x)
    return model, x, batch


def noise_bank(kind, shape, low=0.2, high=None, std=0.1):
    rng = np.random.default_rng(5)
    if kind == "gaussian":
        return [rng.normal(0.0, std, size=shape).astype(np.float32) for _ in range(N_DRAWS)]
    low, high = (-low, low) if high is None else (low, high)
    return [rng.uniform(low, high, size=shape).astype(np.float32) for _ in range(N_DRAWS)]


def injected(bank):
    """(Quantus perturb_func, camkit noise hook) adding the same k-th draw at the k-th call."""
    calls = []

    def perturb_func(arr, indices, **kwargs):
        calls.append(1)
        return arr + bank[len(calls) - 1]

    def noise(batch, draw, generators, shape):
        return torch.from_numpy(bank[draw]).view(-1, *shape)

    return perturb_func, noise


def run_quantus(quantus, cls, model, x, batch, **options):
    values = cls(disable_warnings=True, **options)(
        model=model, x_batch=x.numpy(), y_batch=batch.targets.numpy(), explain_func=explain_func,
        explain_func_kwargs={"method": "gradcam"}, device="cpu")
    return np.asarray(values, dtype=np.float64)


@pytest.mark.parametrize("name, cls, kind, options", [
    ("max_sensitivity", "MaxSensitivity", "uniform", {}),
    ("avg_sensitivity", "AvgSensitivity", "uniform", {}),
    ("local_lipschitz_estimate", "LocalLipschitzEstimate", "gaussian", {}),
    ("relative_input_stability", "RelativeInputStability", "uniform_positive", {}),
    ("relative_output_stability", "RelativeOutputStability", "uniform_positive", {}),
    ("relative_representation_stability", "RelativeRepresentationStability", "uniform_positive",
     {"layer_names": ["3"]}),
])
def test_noise_metrics_equal_quantus_with_the_same_draws(quantus, setup, name, cls, kind, options):
    model, x, batch = setup
    shape = (x.shape[0], x[0].numel())
    if kind == "uniform_positive":
        bank = noise_bank("uniform", shape, 0.02, 0.2)
    else:
        bank = noise_bank(kind, shape)
    perturb_func, noise = injected(bank)
    expected = run_quantus(quantus, getattr(quantus, cls), model, x, batch, nr_samples=N_DRAWS,
                           perturb_func=perturb_func, **options)
    ours = metric(name, nr_samples=N_DRAWS, **options)
    ours.noise = noise
    got = ours.evaluate(batch).values[name].numpy()
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)


def sign_model():
    """class 0 while channel 0 is positive, class 1 once it is shifted below 0 (a 1x1 conv, ReLU, GAP, linear)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[0, 0], model[0].weight[1, 0] = 1.0, -1.0
        model[0].bias.fill_(0.01)
        model[4].weight.copy_(torch.eye(2))
        model[4].bias.zero_()
    return model


def test_prediction_change_handling_against_quantus(quantus):
    """A draw that flips the prediction: Quantus's sample becomes NaN as soon as one draw flips it, camkit
    leaves that draw out (NaN only when every draw flips); convention="quantus" reproduces Quantus."""
    model = sign_model()
    x = images()
    batch = make_batch(model, x)
    shifts = torch.tensor([[0.0, -5.0, 0.0], [0.0, 0.0, 0.0], [-5.0, -5.0, -5.0], [0.1, 0.0, 0.05]])  # (sample, draw)
    bank = []
    for draw in range(N_DRAWS):
        noise = torch.zeros_like(x)
        noise[:, 0] = shifts[:, draw, None, None] + 0.01 * torch.rand(x.shape[0], *x.shape[2:])
        bank.append(noise.reshape(x.shape[0], -1).numpy())
    perturb_func, noise = injected(bank)
    expected = run_quantus(quantus, quantus.RelativeInputStability, model, x, batch, nr_samples=N_DRAWS,
                           perturb_func=perturb_func)
    assert np.isnan(expected[[0, 2]]).all() and np.isfinite(expected[[1, 3]]).all()
    quantus_like = metric("relative_input_stability", nr_samples=N_DRAWS, convention="quantus")
    quantus_like.noise = noise
    np.testing.assert_allclose(quantus_like.evaluate(batch).values["relative_input_stability"].numpy(), expected,
                               rtol=1e-5)
    ours = metric("relative_input_stability", nr_samples=N_DRAWS)
    ours.noise = noise
    got = ours.evaluate(batch).values["relative_input_stability"].numpy()
    np.testing.assert_allclose(got[[1, 3]], expected[[1, 3]], rtol=1e-5)
    assert np.isfinite(got[0]) and np.isnan(got[2])  # sample 0: the two kept draws; sample 2: none kept
    kept = metric("relative_input_stability", nr_samples=1)  # sample 0's value is the max over its kept draws
    values = []
    for draw in (0, 2):
        kept.noise = lambda batch, d, g, shape, draw=draw: torch.from_numpy(bank[draw]).view(-1, *shape)
        values.append(kept.evaluate(batch).values["relative_input_stability"][0].item())
    assert got[0] == pytest.approx(max(values), rel=1e-9)


def test_continuity_equals_quantus(quantus, setup):
    model, x, batch = setup
    expected = run_quantus(quantus, quantus.Continuity, model, x, batch, nr_steps=5)
    for convention in ("camkit", "quantus"):
        got = metric("continuity", nr_steps=5, convention=convention).evaluate(batch).values["continuity"].numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_consistency_equals_quantus_under_its_convention(quantus, setup):
    model, _, _ = setup
    x = images(n=6, seed=3)
    batch = make_batch(model, x)
    expected = run_quantus(quantus, quantus.Consistency, model, x, batch)
    got = metric("consistency", convention="quantus").evaluate(batch).values["consistency"].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_the_quantus_snippet_in_the_docs_runs(quantus):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "quantus_interop" in b]
    namespace = {}
    exec(compile(block, "docs/evaluation.md", "exec"), namespace)
    scores = np.asarray(namespace["scores"])
    assert scores.shape == (4,) and np.isfinite(scores).all() and (scores >= 0).all()
