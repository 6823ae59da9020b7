"""camkit's faithfulness family held to Quantus 0.6 on the same inputs (deterministic metrics per sample
within 1e-5, randomised ones with Quantus's own draws injected), and each Quantus fault shown on a
minimal case beside camkit's value and ``convention="quantus"``."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch
from quantus_support import import_quantus

quantus = import_quantus()


def tiny_cnn(channels):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


def linear_net(channels, side):
    """Every pixel moves the logits: removal changes the top-1 class (ROAD's accuracy needs that)."""
    torch.manual_seed(0)
    layer = nn.Linear(channels * side * side, 3)
    nn.init.normal_(layer.weight, std=1.0)
    return nn.Sequential(nn.Flatten(), layer).eval()


def case(channels, side, n=3, model=None, blocky=False):
    generator = torch.Generator().manual_seed(1)
    if blocky:  # a few flat regions: SLIC finds a handful of superpixels
        x = torch.nn.functional.interpolate(torch.rand(n, channels, 3, 3, generator=generator), size=(side, side))
    else:
        x = torch.rand(n, channels, side, side, generator=generator)
    maps = torch.randn(n, side, side, generator=generator)
    model = model or tiny_cnn(channels)
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, maps, targets


def batch(model, x, maps, targets, indices=None):
    return EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=targets, targets=targets,
                     maps=maps, map_letters="NHW", indices=torch.arange(len(x)) if indices is None else indices,
                     explain=None)


def run_quantus(name, model, x, maps, targets, call=None, **options):
    metric = getattr(quantus, name)(disable_warnings=True, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(model=model, x_batch=x.numpy(), y_batch=targets.numpy(), a_batch=maps[:, None].numpy(),
                      device="cpu", **(call or {}))


def run_camkit(name, model, x, maps, targets, **options):
    return camkit.lookup("metrics", name)(**options).evaluate(batch(model, x, maps, targets)).values


def close(ours, theirs, tol=1e-5):
    np.testing.assert_allclose(np.asarray(ours.numpy() if torch.is_tensor(ours) else ours, dtype=float),
                               np.asarray(theirs, dtype=float), rtol=0, atol=tol)


# one grey 12 x 12 case (a site is an element) and one RGB 8 x 8 case (Quantus's element = channel x pixel)
GREY, RGB = (1, 12), (3, 8)


@pytest.mark.parametrize("shape, features", [(GREY, "site"), (GREY, "element"), (RGB, "element")])
def test_pixel_flipping_matches_quantus_per_sample(shape, features):
    model, x, maps, targets = case(*shape)
    theirs = run_quantus("PixelFlipping", model, x, maps, targets, features_in_step=4)
    ours = run_camkit("pixel_flipping", model, x, maps, targets, features_in_step=4, features=features,
                      convention="quantus")  # Quantus's order among the tied channels of a pixel
    close(ours["curve"], theirs)
    close(ours["auc"], np.trapezoid(np.asarray(theirs), axis=1))


@pytest.mark.parametrize("shape, features", [(GREY, "site"), (RGB, "element")])
def test_faithfulness_estimate_matches_quantus_per_sample(shape, features):
    model, x, maps, targets = case(*shape)
    theirs = run_quantus("FaithfulnessEstimate", model, x, maps, targets, features_in_step=4)
    close(run_camkit("faithfulness_estimate", model, x, maps, targets, features_in_step=4, features=features,
                     convention="quantus")["correlation"], theirs)


@pytest.mark.parametrize("shape, patch", [(GREY, 5), (GREY, 4), (RGB, 3)])  # 5 and 3 do not divide: padded grid
@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_matches_quantus_per_sample(shape, patch, order):
    model, x, maps, targets = case(*shape)
    theirs = run_quantus("RegionPerturbation", model, x, maps, targets, patch_size=patch, order=order)
    close(run_camkit("region_perturbation", model, x, maps, targets, patch_size=patch, order=order)["curve"], theirs)


@pytest.mark.parametrize("shape, patch", [(GREY, 5), (RGB, 4)])
def test_selectivity_matches_quantus_per_sample(shape, patch):
    model, x, maps, targets = case(*shape)
    theirs = run_quantus("Selectivity", model, x, maps, targets, patch_size=patch)
    close(run_camkit("selectivity", model, x, maps, targets, patch_size=patch)["curve"], theirs)


@pytest.mark.parametrize("shape", [GREY, RGB])
def test_infidelity_matches_quantus_when_the_patch_divides_the_side(shape):
    model, x, maps, targets = case(*shape)
    theirs = run_quantus("Infidelity", model, x, maps, targets, perturb_patch_sizes=[4, 2], n_perturb_samples=2)
    close(run_camkit("infidelity", model, x, maps, targets, perturb_patch_sizes=[4, 2])["infidelity"], theirs, 1e-4)


def test_irof_matches_quantus_on_grey_images():
    model, x, maps, targets = case(1, 12, n=3, blocky=True)
    theirs = run_quantus("IROF", model, x, maps, targets, perturb_baseline=0.0, return_aggregate=False)
    ours = run_camkit("irof", model, x, maps, targets, perturb_baseline=0.0, convention="quantus")
    close(ours["aoc"], theirs)


def test_sufficiency_quantus_convention_matches_quantus():
    model, x, _, targets = case(1, 12, n=6)
    generator = torch.Generator().manual_seed(4)
    prototypes = torch.randn(2, 12, 12, generator=generator)
    maps = prototypes[torch.tensor([0, 0, 0, 1, 1, 1])] + 0.3 * torch.randn(6, 12, 12, generator=generator)
    theirs = run_quantus("Sufficiency", model, x, maps, targets)
    ours = run_camkit("sufficiency", model, x, maps, targets, convention="quantus")["sufficiency"]
    close(ours, theirs)
    assert np.asarray(theirs).max() > 0  # some pairs are close: the comparison is not vacuous


def _quantus_subsets(features, size, runs, n):
    """numpy's global draws as FaithfulnessCorrelation makes them: per run one subset per sample, then
    the ``"uniform"`` entry Quantus's ``get_baseline_dict`` draws on every perturbation call."""
    draws = []
    for _ in range(runs):
        draws.append([np.random.choice(features, size, replace=False) for _ in range(n)])
        np.random.uniform(size=n)
    return torch.as_tensor(np.array(draws)).permute(1, 0, 2)  # (N, runs, size)


@pytest.mark.parametrize("shape, features", [(GREY, "site"), (RGB, "element")])
def test_faithfulness_correlation_matches_quantus_with_its_draws(shape, features):
    model, x, maps, targets = case(*shape)
    count = shape[1] ** 2 * (shape[0] if features == "element" else 1)
    np.random.seed(5)
    theirs = run_quantus("FaithfulnessCorrelation", model, x, maps, targets, nr_runs=20, subset_size=30,
                         return_aggregate=False)
    np.random.seed(5)
    subsets = _quantus_subsets(count, 30, 20, len(x))
    metric = camkit.lookup("metrics", "faithfulness_correlation")(nr_runs=20, subset_size=30, features=features)
    metric.draw_subsets = lambda batch, features: subsets
    close(metric.evaluate(batch(model, x, maps, targets)).values["correlation"], theirs)


def test_monotonicity_correlation_matches_quantus_with_its_uniform_draws():
    from camkit_plugins.metrics.engine import baseline

    model, x, maps, targets = case(*GREY)
    np.random.seed(6)
    theirs = run_quantus("MonotonicityCorrelation", model, x, maps, targets, nr_samples=5, features_in_step=12)
    np.random.seed(6)
    uniform = np.random.uniform(size=(12, 5, len(x)))  # (window, draw, sample), Quantus's order
    fill = baseline("uniform")
    fill.values = lambda indices, copies: torch.as_tensor(uniform[(copies // 5).numpy(), (copies % 5).numpy(),
                                                                  indices.numpy()])
    metric = camkit.lookup("metrics", "monotonicity_correlation")(nr_samples=5, features_in_step=12)
    metric.perturbation = lambda batch: fill
    close(metric.evaluate(batch(model, x, maps, targets)).values["correlation"], theirs)


def test_sensitivity_n_quantus_convention_matches_quantus_over_the_samples():
    from camkit_plugins.metrics.faithfulness_correlations import quantus_sensitivity_n

    model, x, maps, targets = case(1, 12, n=5)
    theirs = run_quantus("SensitivityN", model, x, maps, targets, features_in_step=4, return_aggregate=False)
    values = run_camkit("sensitivity_n", model, x, maps, targets, features_in_step=4, convention="quantus")
    close(quantus_sensitivity_n(values["att_sums"], values["pred_deltas"]), theirs)


def _quantus_road_noise(maps, percentages, channels=1):
    """ROAD's numpy draws: per percentage, per sample, ``randn(C, k)`` for its k most relevant pixels."""
    n, side = maps.shape[0], maps.shape[1]
    order = np.argsort(-maps.reshape(n, -1).numpy(), axis=1)
    fields = np.zeros((len(percentages), n, channels, side * side))
    for p, percentage in enumerate(percentages):
        k = int(side * side * percentage / 100)
        for i in range(n):
            fields[p, i][:, order[i, :k]] = np.random.randn(channels, k)
    return fields.reshape(len(percentages), n, channels, side, side)


def test_road_matches_quantus_with_its_noise():
    percentages = [5, 21, 50, 79, 95]
    model, x, maps, targets = case(1, 12, n=6, model=linear_net(1, 12))
    np.random.seed(3)
    theirs = run_quantus("ROAD", model, x, maps, targets, percentages=percentages, noise=0.3,
                         return_aggregate=False)
    np.random.seed(3)
    fields = _quantus_road_noise(maps, percentages)
    metric = camkit.lookup("metrics", "road")(percentages=percentages, noise=0.3)
    metric.imputation.noise_field = lambda inputs, layout, indices, draws: torch.as_tensor(
        fields[draws.numpy(), indices.numpy()], dtype=inputs.dtype)
    accuracy = metric.evaluate(batch(model, x, maps, targets)).values["morf_accuracy"]
    close(accuracy.mean(dim=0), [theirs[p] for p in percentages])
    assert 0 < accuracy.mean() < 1  # the top-1 class does change: the comparison is not vacuous


def test_road_imputation_equals_quantus_linear_system_per_channel():
    from quantus.functions.perturb_func import noisy_linear_imputation

    x = torch.rand(1, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    pixels = np.random.default_rng(0).permutation(81)[:50]
    removed = torch.zeros(1, 1, 81, dtype=torch.bool)
    removed[0, 0, pixels] = True
    road = camkit.lookup("perturbations", "road")(noise=0.0, exact=True)
    ours = road.apply(x, removed.view(1, 1, 9, 9), Layout.parse("NCHW"), torch.arange(1))
    close(ours[0], noisy_linear_imputation(x[0].numpy(), pixels, noise=0.0))  # pixel indices: Quantus's own helper


# ---------------------------------------------------------------- Quantus's faults, on minimal cases


def test_fault_monotonicity_is_always_true_in_quantus():
    model, x, maps, targets = case(*GREY)
    theirs = run_quantus("Monotonicity", model, x, maps, targets, features_in_step=12)
    assert all(theirs)  # the model only ever saw the baseline image
    quantus_like = run_camkit("monotonicity", model, x, maps, targets, features_in_step=12, convention="quantus")
    assert quantus_like["monotonic"].tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(quantus_like["curve"], quantus_like["curve"][:, :1].expand_as(quantus_like["curve"]))
    ours = run_camkit("monotonicity", model, x, maps, targets, features_in_step=12)
    assert ours["monotonic"].tolist() == (ours["curve"].diff(dim=1) >= 0).all(dim=1).double().tolist()
    assert ours["monotonic"].sum() < 3  # random maps on a random net: not monotonic, as they should not be


@pytest.mark.parametrize("name", ["ROAD", "IROF"])
def test_fault_road_and_irof_crash_on_rgb_where_camkit_runs(name):
    model, x, maps, targets = case(3, 12, n=2, blocky=True)
    with pytest.raises(Exception):
        run_quantus(name, model, x, maps, targets, **({"percentages": [10, 50]} if name == "ROAD" else {}))
    values = run_camkit(name.lower(), model, x, maps, targets, **({"percentages": [10, 50]} if name == "ROAD" else {}))
    assert all(torch.isfinite(v).all() for v in values.values())


def test_fault_road_returns_only_the_first_batch():
    percentages = [20, 60]
    model, x, maps, targets = case(1, 12, n=4, model=linear_net(1, 12))
    np.random.seed(3)
    theirs = run_quantus("ROAD", model, x, maps, targets, percentages=percentages, noise=0.0,
                         call={"batch_size": 2}, return_aggregate=False)
    accuracy = run_camkit("road", model, x, maps, targets, percentages=percentages, noise=0.0)["morf_accuracy"]
    assert accuracy.shape == (4, 2)  # every sample
    close(accuracy[:2].mean(dim=0), [theirs[p] for p in percentages])  # Quantus: the first batch's two only
    assert not torch.equal(accuracy[:2].mean(dim=0), accuracy.mean(dim=0))


def test_fault_sensitivity_n_returns_only_the_first_batch():
    from camkit_plugins.metrics.faithfulness_correlations import quantus_sensitivity_n

    model, x, maps, targets = case(1, 12, n=6)
    theirs = run_quantus("SensitivityN", model, x, maps, targets, features_in_step=8, call={"batch_size": 3},
                         return_aggregate=False)
    values = run_camkit("sensitivity_n", model, x, maps, targets, features_in_step=8, convention="quantus")
    first = quantus_sensitivity_n(values["att_sums"][:3], values["pred_deltas"][:3])
    every = quantus_sensitivity_n(values["att_sums"], values["pred_deltas"])
    close(first, theirs)
    assert (every - first).abs().max() > 0.05


def test_fault_infidelity_crashes_when_the_patch_does_not_divide_the_side():
    model, x, maps, targets = case(1, 10)
    with pytest.raises(Exception):
        run_quantus("Infidelity", model, x, maps, targets, perturb_patch_sizes=[4], n_perturb_samples=1)
    ours = run_camkit("infidelity", model, x, maps, targets, perturb_patch_sizes=[4])["infidelity"]
    # oracle: the side padded by 1 on each side to 12, blocks [-1, 3), [3, 7), [7, 11), removed one more at a
    # time in raster order and filled with the sample's minimum; the map as given (normalise=False)
    edges, relevance = [0, 3, 7, 10], maps
    with torch.no_grad():
        clean = model(x).gather(1, targets[:, None])[:, 0]
        losses, perturbed = [], x.clone()
        minimum = x.flatten(1).amin(dim=1)
        for row in range(3):
            for col in range(3):
                for i in range(len(x)):
                    perturbed[i, :, edges[row]:edges[row + 1], edges[col]:edges[col + 1]] = minimum[i]
                drop = clean - model(perturbed).gather(1, targets[:, None])[:, 0]
                explained = (relevance[:, None] * (x - perturbed)).flatten(1).sum(dim=1)
                losses.append((explained - drop) ** 2)
    close(ours, torch.stack(losses, dim=1).mean(dim=1).double(), 1e-4)


def test_fault_sufficiency_depends_on_the_batch_in_quantus_only():
    model, x, _, targets = case(1, 12, n=4)
    generator = torch.Generator().manual_seed(2)
    prototype = torch.randn(12, 12, generator=generator)
    maps = torch.stack([prototype + 0.5 * torch.randn(12, 12, generator=generator),
                        prototype + 0.5 * torch.randn(12, 12, generator=generator),
                        torch.randn(12, 12, generator=generator), 5 * torch.randn(12, 12, generator=generator)])
    three = run_quantus("Sufficiency", model, x[:3], maps[:3], targets[:3])
    four = run_quantus("Sufficiency", model, x, maps, targets)
    assert (np.asarray(three[:3]) != np.asarray(four[:3])).any()  # sample 3 moved the others' verdicts
    ours3 = run_camkit("sufficiency", model, x[:3], maps[:3], targets[:3], threshold=0.3)["sufficiency"]
    ours4 = run_camkit("sufficiency", model, x, maps, targets, threshold=0.3)["sufficiency"]
    close(ours4[:3], ours3)  # camkit: a pair's verdict does not depend on the others
    assert torch.isnan(ours3[2])  # no close sample: undefined (Quantus: 0)


def test_fault_irof_pads_curves_to_the_batch_largest_segment_count():
    model, x, maps, targets = case(1, 16, n=3, blocky=True)
    x[0] = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(1))  # Felzenszwalb: 3 segments, others 7
    options = {"segmentation_method": "felzenszwalb", "perturb_baseline": 0.0}
    alone = run_quantus("IROF", model, x[:1], maps[:1], targets[:1], return_aggregate=False, **options)
    together = run_quantus("IROF", model, x, maps, targets, return_aggregate=False, **options)
    ours = run_camkit("irof", model, x, maps, targets, **options)
    assert ours["segments"][0] < ours["segments"][1:].min()
    assert abs(alone[0] - together[0]) > 1e-3  # Quantus: sample 0's AOC moved because others joined
    ours_alone = run_camkit("irof", model, x[:1], maps[:1], targets[:1], **options)["aoc"]
    close(ours["aoc"][:1], ours_alone)
    close(ours_alone, alone)  # alone, nothing is padded: there Quantus is right
    close(run_camkit("irof", model, x, maps, targets, convention="quantus", **options)["aoc"], together)


def test_camkit_needs_no_np_trapz(monkeypatch):
    monkeypatch.delattr(np, "trapz", raising=False)
    model, x, maps, targets = case(*GREY)
    values = run_camkit("pixel_flipping", model, x, maps, targets, features_in_step=16)
    close(values["auc"], np.trapezoid(values["curve"].numpy(), axis=1))
