"""camkit's complexity metrics against hand-computed values and Quantus 0.6 (per sample within 1e-5; images,
a skeleton NTV map and a 1-D signal; site and element features), and Quantus's batch-dependent
normalisation in EffectiveComplexity."""

import math
import warnings

import numpy as np
import pytest
import torch

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch
from quantus_support import import_quantus

quantus = import_quantus()


def batch_of(maps, inputs, layout="NCHW", letters="NHW"):
    n = maps.shape[0]
    return EvalBatch(model=None, inputs=inputs, input_layout=Layout.parse(layout), labels=torch.zeros(n).long(),
                     targets=torch.zeros(n).long(), maps=maps, map_letters=letters, indices=torch.arange(n),
                     explain=lambda *a: maps)


def ours(name, batch, **options):
    metric = camkit.lookup("metrics", name)(**options)
    return metric.evaluate(batch).values[metric.primary].double().cpu().numpy()


def theirs(cls, a, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = getattr(quantus, cls)(disable_warnings=True, **options)(
            model=None, x_batch=x, y_batch=np.zeros(len(x), dtype=int), a_batch=a.copy())
    return np.asarray(scores, dtype=np.float64)


def sparse_maps(n, *sites, seed=0):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, *sites, generator=g, dtype=torch.float64)
    maps = maps * (torch.rand(n, *sites, generator=g) < 0.5)
    maps.reshape(n, -1)[:, 0] = 1.0  # each map's maximum is 1: per-sample and per-batch normalisation agree
    return maps


NAMES = [("sparseness", "Sparseness"), ("complexity", "Complexity"), ("effective_complexity", "EffectiveComplexity")]


def test_hand_computed_values():
    maps = torch.zeros(3, 2, 2, dtype=torch.float64)
    maps[0, 1, 1] = 1.0  # one site holds everything
    maps[1] = 0.5  # uniform
    maps[2] = torch.tensor([[0.1, 0.2], [0.3, 0.4]])
    batch = batch_of(maps, torch.zeros(3, 1, 2, 2))
    # Gini: sorted values weighted by 2i - n - 1 = (-3, -1, 1, 3), over n * sum
    np.testing.assert_allclose(ours("sparseness", batch), [3 / 4, 0.0, (-0.3 - 0.2 + 0.3 + 1.2) / 4], atol=1e-12)
    p = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(ours("complexity", batch), [0.0, math.log(4), -(p * np.log(p)).sum()], atol=1e-12)
    np.testing.assert_allclose(ours("effective_complexity", batch, eps=0.3), [1, 4, 3])  # 0.3 / 0.4 = 0.75 > 0.3
    # a map with no relevance has no distribution: NaN, not "least sparse"
    empty = maps[:2].clone()
    empty[0] = 0.0  # (Quantus refuses a batch of only zero maps)
    batch = batch_of(empty, torch.zeros(2, 1, 2, 2))
    assert np.isnan(ours("sparseness", batch)[0]) and np.isnan(ours("complexity", batch)[0])
    assert ours("sparseness", batch, convention="quantus")[0] == 0.0
    assert theirs("Sparseness", empty[:, None].numpy(), np.zeros((2, 1, 2, 2)))[0] == 0.0


@pytest.mark.parametrize("name,cls", NAMES)
def test_images_match_quantus_per_sample(name, cls):
    maps = sparse_maps(5, 8, 8)
    maps[1] -= 0.4  # signed: abs=True by default
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64)
    expected = theirs(cls, maps[:, None].numpy(), x.numpy())
    np.testing.assert_allclose(ours(name, batch_of(maps, x)), expected, atol=1e-5)
    np.testing.assert_allclose(ours(name, batch_of(maps, x), convention="quantus"), expected, atol=1e-5)


@pytest.mark.parametrize("name,cls", NAMES)
def test_element_features_match_quantus_on_channel_expanded_maps(name, cls):
    maps = sparse_maps(4, 6, 6, seed=1)
    x = torch.rand(4, 3, 6, 6, dtype=torch.float64)
    expected = theirs(cls, np.repeat(maps[:, None].numpy(), 3, axis=1), x.numpy())
    np.testing.assert_allclose(ours(name, batch_of(maps, x), features="element"), expected, atol=1e-5)
    site = ours(name, batch_of(maps, x))
    shift = {"sparseness": 0.0, "complexity": math.log(3), "effective_complexity": None}[name]
    if shift is None:
        np.testing.assert_allclose(expected, 3 * site)  # every site counted once per channel
    else:
        np.testing.assert_allclose(expected, site + shift, atol=1e-5)


@pytest.mark.parametrize("name,cls", NAMES)
def test_skeleton_and_signal_maps_match_quantus_on_flattened_features(name, cls):
    for letters, layout, sites, input_shape in (("NTV", "NCTVM", (6, 5), (3, 3, 6, 5, 2)),
                                                ("NL", "NCL", (40,), (3, 2, 40))):
        maps = sparse_maps(3, *sites, seed=2)
        x = torch.rand(*input_shape, dtype=torch.float64)
        expected = theirs(cls, maps.reshape(3, 1, -1).numpy(), np.zeros((3, 1, maps[0].numel())))
        np.testing.assert_allclose(ours(name, batch_of(maps, x, layout, letters)), expected, atol=1e-5,
                                   err_msg=letters)


def test_effective_complexity_does_not_depend_on_the_batch():
    maps = torch.zeros(2, 4, 4, dtype=torch.float64)
    maps[0, 0, :4] = torch.tensor([1.0, 0.5, 0.2, 0.05])
    maps[1, 0, 0] = 10.0  # a sample with a larger scale in the same batch
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    alone = ours("effective_complexity", batch_of(maps[:1], x[:1]), eps=0.03)
    together = ours("effective_complexity", batch_of(maps, x), eps=0.03)
    assert alone.tolist() == [4.0] and together.tolist() == [4.0, 1.0]
    # Quantus divides by the batch's largest |a| (10): sample 0's values become 0.1, 0.05, 0.02, 0.005
    expected = theirs("EffectiveComplexity", maps[:, None].numpy(), x.numpy(), eps=0.03)
    assert expected.tolist() == [2.0, 1.0]
    assert ours("effective_complexity", batch_of(maps, x), eps=0.03, convention="quantus").tolist() == [2.0, 1.0]


def test_values_do_not_depend_on_the_batch():
    maps = sparse_maps(4, 5, 5, seed=3) * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)[:, None, None]
    x = torch.zeros(4, 1, 5, 5, dtype=torch.float64)
    for name, _ in NAMES:
        whole = ours(name, batch_of(maps, x))
        parts = np.concatenate([ours(name, batch_of(maps[i:i + 1], x[i:i + 1])) for i in range(4)])
        np.testing.assert_allclose(whole, parts, atol=1e-12, err_msg=name)


def test_element_features_on_a_skeleton_broadcast_over_channels_and_bodies():
    maps = sparse_maps(2, 6, 5, seed=4)  # (N, T, V) onto inputs (N, C=3, T, V, M=2): 6 elements per site
    batch = batch_of(maps, torch.zeros(2, 3, 6, 5, 2), "NCTVM", "NTV")
    np.testing.assert_allclose(ours("effective_complexity", batch, features="element"),
                               6 * ours("effective_complexity", batch))
    np.testing.assert_allclose(ours("complexity", batch, features="element"),
                               ours("complexity", batch) + math.log(6), atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_maps_give_the_cpu_values():
    maps = sparse_maps(3, 8, 8, seed=5)
    mask = torch.rand(3, 8, 8) < 0.3
    mask[:, 0, 0] = True
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    for name in ("pointing_game", "top_k_intersection", "relevance_mass_accuracy", "relevance_rank_accuracy",
                 "attribution_localisation", "auc", "focus", "sparseness", "complexity", "effective_complexity"):
        options = {"k": 5} if name == "top_k_intersection" else {}
        cpu = batch_of(maps, x)
        cpu.mask = mask
        gpu = batch_of(maps.cuda(), x.cuda())
        gpu.mask = mask.cuda()
        np.testing.assert_allclose(ours(name, gpu, **options), ours(name, cpu, **options), atol=1e-9, err_msg=name)
