"""The faithfulness family on any layout: explicit-loop oracles on images, a 1-D signal and a skeleton
(mean pose), both notions of a feature, batch-size and chunk-size independence of every random draw,
captum's infidelity and pytorch-grad-cam's ROAD-combined on their own code, and bad options."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

import camkit
import test_bench
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch

toy = test_bench.toy  # the toy bench's fixture


def make_batch(model, x, maps, layout="NCHW", letters="NHW", targets=None, indices=None, **extra):
    n = x.shape[layout.index("N")]
    targets = torch.zeros(n, dtype=torch.long) if targets is None else targets
    return EvalBatch(model=model, inputs=x, input_layout=Layout.parse(layout), labels=targets, targets=targets,
                     maps=maps, map_letters=letters, indices=torch.arange(n) if indices is None else indices,
                     explain=None, **extra)


def metric(name, **options):
    return camkit.lookup("metrics", name)(**options)


def image_case(channels=3, side=8, n=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    generator = torch.Generator().manual_seed(3)
    x, maps = torch.rand(n, channels, side, side, generator=generator), torch.rand(n, side, side, generator=generator)
    with torch.no_grad():
        targets = model(x).argmax(1)
    return model, x, maps, targets


def probability(model, x, targets):
    with torch.no_grad():
        return model(x).softmax(1).gather(1, targets[:, None])[:, 0].double()


# ---------------------------------------------------------------- oracles on any layout


def test_pixel_flipping_on_a_signal_equals_an_explicit_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten()).eval()
    x, maps = torch.randn(2, 2, 10), torch.rand(2, 10)
    targets = torch.tensor([0, 2])
    curve = metric("pixel_flipping", features_in_step=3).evaluate(
        make_batch(model, x, maps, "NCL", "NL", targets)).values["curve"]
    assert curve.shape == (2, 4)  # ceil(10 / 3) steps
    for i in range(2):
        order, flipped = maps[i].argsort(descending=True), x[i:i + 1].clone()
        for step, stop in enumerate([3, 6, 9, 10]):
            flipped[0, :, order[:stop]] = x[i].min()  # "black": the sample's minimum, on both channels
            assert curve[i, step].item() == pytest.approx(probability(model, flipped, targets[i:i + 1]).item())


def test_pixel_flipping_on_a_skeleton_with_mean_pose_equals_an_explicit_loop():
    """Maps over (frame, joint) reach (C, T, V, M) inputs; a removed (t, v) takes the joint's mean over T."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 5 * 2, 4)).eval()
    x, maps = torch.randn(2, 3, 6, 5, 2), torch.rand(2, 6, 5)
    targets = torch.tensor([1, 3])
    batch = make_batch(model, x, maps, "NCTVM", "NTV", targets)
    curve = metric("pixel_flipping", features_in_step=7, perturb_baseline="mean-pose").evaluate(batch).values["curve"]
    pose = x.mean(dim=2, keepdim=True).expand_as(x)
    for i in range(2):
        order, moved = maps[i].flatten().argsort(descending=True), x[i:i + 1].clone()
        for step in range(curve.shape[1]):
            for site in order[step * 7:(step + 1) * 7].tolist():
                t, v = divmod(site, 5)
                moved[0, :, t, v] = pose[i, :, t, v]
            assert curve[i, step].item() == pytest.approx(probability(model, moved, targets[i:i + 1]).item())


def test_region_patches_on_a_skeleton_span_frames_not_joints():
    from camkit_plugins.metrics.engine import block_labels

    batch = make_batch(None, torch.zeros(1, 3, 6, 5, 1), torch.zeros(1, 6, 5), "NCTVM", "NTV")
    labels, count = block_labels(batch, 4)
    # T = 6 padded by 1 on each side to 8: frames [-1, 3) and [3, 7); joints are discrete: one block each
    assert count == 2 * 5
    assert labels.view(6, 5)[:, 2].tolist() == [2, 2, 2, 7, 7, 7]
    assert labels.view(6, 5)[0].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("features, step", [("site", 4), ("element", 3)])  # 3 = a pixel's tied channels
def test_faithfulness_estimate_features_site_and_element_equal_explicit_loops(features, step):
    model, x, maps, targets = image_case(channels=3, side=4, n=2)
    values = metric("faithfulness_estimate", features=features, features_in_step=step).evaluate(
        make_batch(model, x, maps, targets=targets)).values["correlation"]
    for i in range(2):
        relevance = maps[i] / maps[i].abs().max()
        flat = relevance.flatten() if features == "site" else relevance.expand(3, 4, 4).flatten()
        order = flat.double().argsort(descending=True)
        drops, sums = [], []
        for start in range(0, len(flat), step):
            chosen = order[start:start + step]
            removed = torch.zeros(len(flat), dtype=torch.bool)
            removed[chosen] = True
            mask = removed.view(4, 4).expand(3, 4, 4) if features == "site" else removed.view(3, 4, 4)
            perturbed = torch.where(mask, x[i].min(), x[i])[None]
            with torch.no_grad():
                drops.append((model(x[i:i + 1]) - model(perturbed))[0, targets[i]].item())
            sums.append(flat[chosen].sum().item())
        assert values[i].item() == pytest.approx(np.corrcoef(sums, drops)[0, 1], abs=1e-5)


def test_monotonicity_puts_features_back_in_increasing_relevance():
    """logit_0 = sum of the pixels: adding pixels back (from a black baseline) only raises it."""

    class Sum(nn.Module):
        def forward(self, x):
            z = x.flatten(1).sum(1)
            return torch.stack([z, torch.zeros_like(z)], dim=1)

    x = 0.1 * torch.rand(1, 1, 4, 4) + 0.01
    options = {"features_in_step": 4, "perturb_baseline": 0.0}
    values = metric("monotonicity", **options).evaluate(make_batch(Sum(), x, torch.rand(1, 4, 4))).values
    assert values["monotonic"].item() == 1.0 and values["curve"].shape == (1, 4)
    target = torch.zeros(1, dtype=torch.long)
    assert values["curve"][0, -1].item() == pytest.approx(probability(Sum(), x, target).item())  # all back: x
    assert values["curve"][0, 0].item() < values["curve"][0, -1].item()
    flipped = metric("monotonicity", **options).evaluate(make_batch(Sum(), -x, torch.rand(1, 4, 4))).values
    assert flipped["monotonic"].item() == 0.0  # negative pixels: each addition lowers the score


def test_mu_fidelity_equals_an_explicit_loop_with_its_cells():
    model, x, maps, targets = image_case(channels=1, side=6, n=2)
    mu = metric("mu_fidelity", grid_size=3, nb_samples=12)
    batch = make_batch(model, x, maps, targets=targets)
    cells = mu.draw_cells(batch, 9)
    value = mu.evaluate(batch).values["correlation"]
    from scipy.stats import spearmanr

    for i in range(2):
        drops, sums = [], []
        for draw in range(12):
            removed = cells[i, draw].view(3, 3).repeat_interleave(2, 0).repeat_interleave(2, 1)  # nearest 3 -> 6
            with torch.no_grad():
                drops.append((model(x[i:i + 1]) - model(torch.where(removed, 0.0, x[i])[None]))[0, targets[i]].item())
            sums.append(maps[i][removed].sum().item())
        assert value[i].item() == pytest.approx(spearmanr(sums, drops).statistic, abs=1e-6)


# ---------------------------------------------------------------- peers: captum and pytorch-grad-cam


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_captum_convention_equals_captum_with_the_same_noise(normalize):
    captum_metrics = pytest.importorskip("captum.metrics")
    from camkit_plugins.metrics.base import sample_generator

    model, x, maps, targets = image_case(channels=3, side=6, n=3)
    ours = metric("infidelity", convention="captum", n_perturb_samples=5, noise_std=0.05, normalize=normalize)
    value = ours.evaluate(make_batch(model, x, maps, targets=targets)).values["infidelity"]
    noise = torch.stack([0.05 * torch.randn(3, 6, 6, generator=sample_generator(0, i, f"infidelity:noise:{d}"),
                                            dtype=torch.float64).float() for i in range(3) for d in range(5)])

    def perturb(inputs):  # captum repeats each input n_perturb_samples times, in order
        return noise, inputs - noise

    theirs = captum_metrics.infidelity(model, perturb, x, maps[:, None].expand_as(x).contiguous(), target=targets,
                                       n_perturb_samples=5, normalize=normalize)
    np.testing.assert_allclose(value.numpy(), theirs.double().numpy(), rtol=1e-4, atol=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-grad-cam's np.transpose of tensors
def test_road_combined_equals_pytorch_grad_cams_road_combined_without_noise(monkeypatch):
    road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    monkeypatch.setattr(road.NoisyLinearImputer.__init__, "__defaults__", (0.0, road.neighbors_weights))
    model, x, maps, targets = image_case(channels=3, side=10, n=3)
    ours = metric("road_combined", noise=0.0).evaluate(make_batch(model, x, maps, targets=targets)).values
    theirs = road.ROADCombined()(x, maps.numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], model)
    np.testing.assert_allclose(ours["combined"].numpy(), theirs, atol=1e-5)


# ---------------------------------------------------------------- batching, chunking, device


RANDOMISED = [
    ("faithfulness_correlation", {"nr_runs": 6, "subset_size": 5}),
    ("monotonicity_correlation", {"nr_samples": 3, "features_in_step": 8}),
    ("sensitivity_n", {"nr_steps": 3, "nr_samples": 4}),
    ("mu_fidelity", {"grid_size": 3, "nb_samples": 6}),
    ("infidelity", {"convention": "captum", "n_perturb_samples": 3}),
    ("infidelity", {"perturb_baseline": "uniform", "n_perturb_samples": 2}),
    ("region_perturbation", {"patch_size": 3, "order": "random"}),
    ("road", {"percentages": [10, 50, 90], "noise": 0.1}),
    ("road_combined", {"percentiles": [30, 70]}),
    ("pixel_flipping", {"features_in_step": 8}),
]


@pytest.mark.parametrize("name, options", RANDOMISED, ids=[f"{n}-{i}" for i, (n, _) in enumerate(RANDOMISED)])
def test_per_sample_values_do_not_depend_on_batch_or_chunk_size(name, options):
    model, x, maps, targets = image_case(channels=1, side=6, n=4)
    maps[1] = 0.0  # all tied: the seeded tie order must not depend on the batch either
    indices = torch.tensor([10, 11, 12, 13])
    whole = metric(name, **options).evaluate(make_batch(model, x, maps, targets=targets, indices=indices)).values
    for i in range(4):
        one = metric(name, **options).evaluate(make_batch(model, x[i:i + 1], maps[i:i + 1], targets=targets[i:i + 1],
                                                          indices=indices[i:i + 1], chunk_size=3)).values
        for key, value in one.items():
            torch.testing.assert_close(value[0], whole[key][i], atol=1e-6, rtol=1e-6, equal_nan=True)
    for value in whole.values():
        assert value.device == maps.device
    reseeded = metric(name, **options).evaluate(make_batch(model, x, maps, targets=targets, indices=indices,
                                                           seed=1)).values
    if name not in ("pixel_flipping", "road_combined"):  # these draw only for ties (and road_combined's noise)
        primary = camkit.lookup("metrics", name).primary
        assert not torch.allclose(reseeded[primary], whole[primary], equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name, options", RANDOMISED[:5], ids=[n for n, _ in RANDOMISED[:5]])
def test_values_on_cuda_equal_the_cpu_and_stay_on_the_maps_device(name, options):
    model, x, maps, targets = image_case(channels=1, side=6, n=3)
    cpu = metric(name, **options).evaluate(make_batch(model, x, maps, targets=targets)).values
    gpu = metric(name, **options).evaluate(make_batch(model.cuda(), x.cuda(), maps.cuda(), targets=targets.cuda(),
                                                      indices=torch.arange(3).cuda())).values
    for key, value in gpu.items():
        assert value.device.type == "cuda"
        torch.testing.assert_close(value.cpu(), cpu[key], atol=1e-4, rtol=1e-4, equal_nan=True)


# ---------------------------------------------------------------- registry, documentation, bad input


FAMILY = ("faithfulness_correlation", "faithfulness_estimate", "pixel_flipping", "region_perturbation",
          "monotonicity", "monotonicity_correlation", "selectivity", "sensitivity_n", "irof", "road", "infidelity",
          "sufficiency", "mu_fidelity", "road_combined", "deletion", "insertion", "average_drop")


def test_every_faithfulness_metric_is_registered_with_its_quantus_name_and_documented():
    from pathlib import Path

    docs = (Path(__file__).parents[1] / "docs" / "evaluation.md").read_text()
    for name in FAMILY:
        cls = camkit.lookup("metrics", name)
        assert cls.family == "faithfulness" and f"`{name}`" in docs
        if cls.quantus_name:
            snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in cls.quantus_name).lstrip("_")
            assert snake == name or cls.quantus_name in ("IROF", "ROAD")
    assert len([n for n in FAMILY if camkit.lookup("metrics", n).quantus_name]) == 12


def test_bad_options_name_the_problem():
    from camkit.plugin_manager import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean 'nr_runs'"):
        metric("faithfulness_correlation", nr_run=5)
    with pytest.raises(ValueError, match="features="):
        metric("pixel_flipping", features="pixel")
    with pytest.raises(ValueError, match="order="):
        metric("region_perturbation", order="best")
    with pytest.raises(ValueError, match="patch_size"):
        metric("selectivity", patch_size=0)
    with pytest.raises(ValueError, match="either percentages or steps"):
        metric("road", steps=4, percentages=[10])
    model, x, maps, targets = image_case(channels=1, side=4, n=1)
    with pytest.raises(ValueError, match="cannot be drawn"):
        metric("faithfulness_correlation", subset_size=17).evaluate(make_batch(model, x, maps, targets=targets))
    with pytest.raises(ValueError, match="image maps"):
        metric("irof").evaluate(make_batch(None, torch.zeros(1, 3, 4, 5, 1), torch.zeros(1, 4, 5), "NCTVM", "NTV"))


def test_constant_maps_and_lone_samples_are_nan_not_numbers():
    model, x, maps, targets = image_case(channels=1, side=4, n=2)
    maps[0] = 1.0  # every subset sums alike: no correlation is defined
    value = metric("faithfulness_correlation", subset_size=4, nr_runs=5).evaluate(
        make_batch(model, x, maps, targets=targets)).values["correlation"]
    assert math.isnan(value[0].item()) and math.isfinite(value[1].item())
    alone = metric("sufficiency").evaluate(make_batch(model, x[:1], maps[:1], targets=targets[:1]))
    assert math.isnan(alone.values["sufficiency"].item())  # no other sample to compare with


def test_the_bench_runs_the_family_and_its_means_equal_one_direct_batch(toy):
    """Batches of 4 in the suite, one batch of 9 directly: seeded per sample id, the means agree."""
    metrics = [{"name": "faithfulness_correlation", "options": {"nr_runs": 5, "subset_size": 20}},
               {"name": "sensitivity_n", "options": {"convention": "quantus", "features_in_step": 64}}]
    test_bench.run({**toy, "methods": ["cam"], "metrics": metrics})
    table = test_bench.scalars(toy["out"])
    dataset = camkit.lookup("datasets", "toy-boxes")(split="test", seed=0)
    torch.manual_seed(0)
    model = camkit.lookup("models", "toy-cnn")(num_classes=2).eval()
    x = torch.stack([dataset[i]["input"] for i in range(9)])
    result = camkit.explain(model, x, "cam")
    batch = make_batch(model, x, result.maps, targets=result.targets)
    for entry, value in zip(metrics, ["correlation", "mean"]):
        direct = metric(entry["name"], **entry["options"]).evaluate(batch).values[value]
        if value == "mean":  # Quantus's SensitivityN has no per-sample value: reported, undefined
            assert torch.isnan(direct).all() and math.isnan(table[("cam", entry["name"], value)])
        else:
            assert table[("cam", entry["name"], value)] == pytest.approx(direct.nanmean().item(), rel=1e-5)
