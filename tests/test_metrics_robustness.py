"""Robustness metrics: hand-computed values, per-sample seeding (a batch of 4 equals four batches of 1),
any layout (images, 1-D signals, skeleton clips), Quantus's faults on minimal cases, captum's
sensitivity_max."""

import math

import numpy as np
import pytest
import torch

from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch, sample_generator
from camkit_plugins.metrics.robustness import translate
from reexplain_support import images, make_batch, metric, split, tiny_cnn, tiny_signal_net


@pytest.fixture(scope="module")
def image_batch():
    return make_batch(tiny_cnn(), images(), seed=3)


def test_max_and_avg_sensitivity_equal_an_explicit_loop(image_batch):
    """||a - a'||_F / ||a||_F per draw, each sample's noise from its own generator, max / mean over draws."""
    batch = image_batch
    draws = 3
    ratios = torch.empty(4, draws, dtype=torch.float64)
    for i in range(4):
        generator = sample_generator(batch.seed, i, "max_sensitivity:noise")
        for k in range(draws):
            noise = -0.2 + 0.4 * torch.rand(batch.inputs[i].shape, generator=generator)
            perturbed = batch.explain(batch.model, (batch.inputs[i] + noise)[None], batch.targets[i:i + 1])[0]
            ratios[i, k] = (batch.maps[i] - perturbed).double().norm() / batch.maps[i].double().norm()
    got = metric("max_sensitivity", nr_samples=draws).evaluate(batch).values["max_sensitivity"]
    torch.testing.assert_close(got, ratios.amax(dim=1), rtol=1e-5, atol=1e-7)
    avg = metric("avg_sensitivity", nr_samples=draws)
    avg.name = "max_sensitivity"  # same stream name: the same draws, so the mean of the same ratios
    torch.testing.assert_close(avg.evaluate(batch).values["avg_sensitivity"], ratios.mean(dim=1), rtol=1e-5,
                               atol=1e-7)


def test_continuity_equals_an_explicit_loop(image_batch):
    batch = image_batch
    steps, width = 4, batch.inputs.shape[-1]
    dx = (2 * width + 1) // steps
    x = batch.inputs
    black = x.reshape(4, -1).amin(dim=1).view(4, 1, 1, 1)
    best = torch.full((4,), -math.inf, dtype=torch.float64)
    for k in range(1, steps + 1):
        shift = -width + k * dx
        moved = black.expand_as(x).clone()
        if shift >= 0:
            moved[..., shift:] = x[..., :width - shift]
        else:
            moved[..., :width + shift] = x[..., -shift:]
        a_p = batch.explain(batch.model, moved, batch.targets)
        value = ((batch.maps - a_p).abs().reshape(4, -1).sum(1).double()
                 / ((x - moved).reshape(4, -1).double().norm(dim=1) + 1e-9))
        best = torch.maximum(best, value)
    got = metric("continuity", nr_steps=steps).evaluate(batch).values["continuity"]
    torch.testing.assert_close(got, best, rtol=1e-5, atol=1e-7)


def test_translate_moves_and_fills():
    x = torch.arange(5.0).view(1, 1, 1, 5)
    fill = torch.full((1, 1, 1, 1), -1.0)
    assert translate(x, fill, 3, 2).flatten().tolist() == [-1, -1, 0, 1, 2]
    assert translate(x, fill, 3, -1).flatten().tolist() == [1, 2, 3, 4, -1]
    assert translate(x, fill, 3, 9).flatten().tolist() == [-1] * 5


STOCHASTIC = [("max_sensitivity", {}), ("avg_sensitivity", {}), ("local_lipschitz_estimate", {}),
              ("relative_input_stability", {}), ("relative_output_stability", {}),
              ("relative_representation_stability", {}), ("sensitivity_max", {"n_perturb_samples": 2})]


@pytest.mark.parametrize("name, options", STOCHASTIC)
def test_batch_of_four_equals_four_batches_of_one(image_batch, name, options):
    options = {"nr_samples": 2, **options} if name != "sensitivity_max" else options
    whole = metric(name, **options).evaluate(image_batch).values
    for i in range(4):
        alone = metric(name, **options).evaluate(split(image_batch, i)).values
        for key, value in whole.items():
            # same draws; the tolerance covers float32 forwards of different batch sizes, which ROS's tiny
            # logit differences amplify
            torch.testing.assert_close(alone[key][0], value[i], rtol=1e-4, atol=1e-9)
    again = metric(name, **options).evaluate(image_batch).values  # reproducible
    other_seed = metric(name, **options).evaluate(EvalBatch(**{**image_batch.__dict__, "seed": 4})).values
    key = next(iter(whole))
    torch.testing.assert_close(again[key], whole[key])
    assert not torch.allclose(other_seed[key], whole[key])


def test_signal_and_skeleton_layouts():
    """The same metrics on (N, C, L) signals with maps over L, and on skeleton clips (N, C, T, V, M) with
    maps over (T, V); continuity translates along the last continuous axis (L, T)."""
    signal = torch.randn(3, 2, 24, generator=torch.Generator().manual_seed(0))
    batch = make_batch(tiny_signal_net(), signal, layout="NCL", letters="NL")
    for name, options in [("max_sensitivity", {"nr_samples": 2}), ("continuity", {"nr_steps": 3}),
                          ("relative_representation_stability", {"nr_samples": 2}), ("consistency", {})]:
        values = metric(name, **options).evaluate(batch).values
        assert values[name].shape == (3,) and not torch.isinf(values[name]).any()
    clip = torch.randn(2, 3, 8, 5, 1, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(3, 4, (3, 1, 1), padding=(1, 0, 0)), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    batch = make_batch(net, clip, layout="NCTVM", letters="NTV", reduce="M", input_layout="NCTVM",
                       feature_layout="NCTVM")
    assert batch.maps.shape == (2, 8, 5)
    for name, options in [("avg_sensitivity", {"nr_samples": 2}), ("continuity", {"nr_steps": 3})]:
        values = metric(name, **options).evaluate(batch).values
        assert values[name].shape == (2,) and torch.isfinite(values[name]).all()


def test_normalise_uses_each_maps_own_max_not_the_batchs():
    """Quantus's normalise_by_max divides by the max over the whole batch: scaling one sample's map changes
    the others' values. camkit divides each map by its own max (convention="quantus" reproduces Quantus)."""
    model = tiny_cnn()
    batch = make_batch(model, images(n=2), normalize=False)

    def scaled_explain(m, x, t):
        maps = batch.explain(m, x, t)
        return maps * torch.tensor([1.0, 10.0]).view(2, 1, 1)

    scaled = EvalBatch(**{**batch.__dict__, "explain": scaled_explain, "maps": scaled_explain(model, batch.inputs,
                                                                                             batch.targets)})
    for convention, changes in (("camkit", False), ("quantus", True)):
        lle = metric("local_lipschitz_estimate", nr_samples=2, convention=convention)
        first = lle.evaluate(batch).values["local_lipschitz_estimate"][0]
        second = lle.evaluate(scaled).values["local_lipschitz_estimate"][0]
        assert (abs(first - second) > 1e-3 * abs(first)) == changes


def test_consistency_by_hand_and_quantus_discretisation():
    """Four maps: 0 and 1 share their top sites, 2 and 3 share theirs, 2's and 3's predictions differ.
    Quantus's top_n_sign reads the first n values (the top-left corner), zero in every map: one label."""
    maps = torch.zeros(4, 4, 4)
    maps[0, 3, 3], maps[1, 3, 3], maps[0, 2, 2], maps[1, 2, 2] = 1.0, 0.9, 0.5, 0.4
    maps[2, 1, 3], maps[3, 1, 3] = 1.0, 1.0
    predictions = torch.tensor([0, 0, 1, 2])
    batch = EvalBatch(model=None, inputs=torch.zeros(4, 1, 4, 4), input_layout=Layout.parse("NCHW"),
                      labels=predictions, targets=predictions, maps=maps, map_letters="NHW",
                      indices=torch.arange(4), explain=None, predictions=predictions)
    got = metric("consistency", n=2).evaluate(batch).values["consistency"]
    assert got.tolist() == [1.0, 1.0, 0.0, 0.0]
    quantus_like = metric("consistency", n=2, convention="quantus").evaluate(batch).values["consistency"]
    torch.testing.assert_close(quantus_like, torch.tensor([1 / 3, 1 / 3, 0.0, 0.0], dtype=torch.float64))
    alone = metric("consistency", n=2).evaluate(EvalBatch(**{**batch.__dict__, "maps": maps[:3], "inputs":
                                                             batch.inputs[:3], "predictions": predictions[:3],
                                                             "indices": torch.arange(3)})).values["consistency"]
    assert math.isnan(alone[2].item())  # nobody else shares sample 2's explanation: undefined, not 0


def test_prediction_change_leaves_the_draw_out(image_batch):
    """With return_nan_when_prediction_changes, a draw that changes the top-1 class is left out; the sample
    is NaN only when every draw is."""
    values = torch.tensor([[1.0, 5.0, 2.0], [1.0, 2.0, 3.0]], dtype=torch.float64)
    changed = torch.tensor([[False, True, False], [True, True, True]])
    ours = metric("max_sensitivity", return_nan_when_prediction_changes=True)
    reduced = ours.reduce(values, changed)
    assert reduced[0].item() == 2.0 and math.isnan(reduced[1].item())
    quantus_like = metric("max_sensitivity", return_nan_when_prediction_changes=True, convention="quantus")
    assert torch.isnan(quantus_like.reduce(values, changed)).all()


def test_rrs_hooks_removed_and_model_left_as_found(image_batch):
    model = image_batch.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        metric("relative_representation_stability", nr_samples=1).evaluate(image_batch)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BatchNorm statistics too
        assert all(m.training for m in model.modules())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_sensitivity_max_equals_captum():
    captum_metrics = pytest.importorskip("captum.metrics")
    model = tiny_cnn()
    x = images(n=3)
    batch = make_batch(model, x)
    draws = 4
    rng = np.random.default_rng(0)
    bank = [torch.from_numpy(rng.uniform(-0.02, 0.02, size=x.shape).astype(np.float32)) for _ in range(draws)]

    def perturb_func(inputs, perturb_radius=0.02):
        # captum repeats each input n_perturb_samples times (repeat_interleave): row i * draws + k
        noise = torch.stack([bank[k][i] for i in range(x.shape[0]) for k in range(draws)])
        return inputs + noise

    def explanation_func(inputs, target=None):  # captum 0.9 zips the explanations: a tuple, one per input
        return (batch.explain(model, inputs[0] if isinstance(inputs, tuple) else inputs, target),)

    expected = captum_metrics.sensitivity_max(explanation_func, x, perturb_func=perturb_func,
                                              n_perturb_samples=draws, target=batch.targets)
    ours = metric("sensitivity_max", n_perturb_samples=draws)
    ours.noise = lambda b, draw, generators, shape: bank[draw]
    got = ours.evaluate(batch).values["sensitivity_max"]
    torch.testing.assert_close(got, expected.double(), rtol=1e-5, atol=1e-7)


def test_bad_options():
    with pytest.raises(ValueError, match="nr_samples"):
        metric("max_sensitivity", nr_samples=0)
    with pytest.raises(ValueError, match="norm_numerator"):
        metric("max_sensitivity", norm_numerator="l3")
    with pytest.raises(ValueError, match="convention"):
        metric("continuity", convention="captum")
    with pytest.raises(ValueError, match="layer_names or layer_indices"):
        metric("relative_representation_stability", layer_names=["0"], layer_indices=[0])
    with pytest.raises(TypeError):
        metric("avg_sensitivity", nr_sample=3)
