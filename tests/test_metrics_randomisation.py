"""Randomisation metrics: the model-randomisation rule (Quantus's seeds on request), the user's model and
random state left untouched, per-sample seeding, SSIM and discrete entropy against their references, and
layouts other than images."""

import math

import numpy as np
import pytest
import torch

from camkit_plugins.metrics.base import EvalBatch
from camkit_plugins.metrics.randomisation import (
    discrete_entropy,
    randomisable_layers,
    randomised_models,
    reset_layer_,
    ssim,
)
from reexplain_support import images, make_batch, metric, split, tiny_cnn, tiny_signal_net

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # maps of randomised models


@pytest.fixture(scope="module")
def image_batch():
    return make_batch(tiny_cnn(), images(), seed=2)


def test_reset_layer_reproduces_torch_manual_seed_and_keeps_the_global_state():
    layer = torch.nn.Conv2d(3, 4, 3)
    expected = torch.nn.Conv2d(3, 4, 3)
    state = torch.get_rng_state()
    reset_layer_(layer, 43)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(43)
    expected.reset_parameters()
    assert torch.equal(layer.weight, expected.weight) and torch.equal(layer.bias, expected.bias)


def test_layers_and_orders_follow_quantus():
    model = tiny_cnn()
    assert [name for name, _ in randomisable_layers(model)] == ["0", "1", "3", "7"]  # BatchNorm counted
    names = [name for name, _ in randomised_models(model, "top_down", 0, "camkit")]
    assert names == ["7", "3", "1", "0"]
    cascade = [copy_state(m) for _, m in randomised_models(model, "bottom_up", 0, "camkit")]
    assert not torch.equal(cascade[-1]["0.weight"], model[0].weight)  # cascading: the first stays random
    independent = [copy_state(m) for _, m in randomised_models(model, "independent", 0, "camkit")]
    assert torch.equal(independent[-1]["0.weight"], model[0].weight)  # independent: only the last layer changed
    assert not torch.equal(independent[-1]["7.weight"], model[7].weight)


def copy_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_quantus_seeds_every_layer_alike_camkit_does_not():
    """Quantus seeds every layer with seed + 1: two layers of one shape get the same weights."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    for convention, same in (("quantus", True), ("camkit", False)):
        *_, (_, randomised) = randomised_models(model, "top_down", 42, convention)
        assert torch.equal(randomised[0].weight, randomised[1].weight) == same


def test_mprt_leaves_the_model_mode_grads_and_random_state_as_found(image_batch):
    model = image_batch.model
    before = copy_state(model)
    model.train()
    state = torch.get_rng_state()
    try:
        values = metric("mprt").evaluate(image_batch).values
    finally:
        modes = [m.training for m in model.modules()]
        model.eval()
    assert all(modes) and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert values["correlation"].shape == (4, 4)
    torch.testing.assert_close(values["average_correlation"], values["correlation"].mean(dim=1))
    last = metric("mprt", skip_layers=True).evaluate(image_batch).values
    assert last["correlation"].shape == (4, 1)
    torch.testing.assert_close(last["last_correlation"], values["last_correlation"])


def test_randomization_alias_still_registered(image_batch):
    values = metric("randomization", max_layers=2).evaluate(image_batch).values
    assert values["spearman"].shape == (4, 2)


@pytest.mark.parametrize("name, options", [("random_logit", {}), ("smooth_mprt", {"nr_samples": 2})])
def test_batch_of_four_equals_four_batches_of_one(image_batch, name, options):
    whole = metric(name, **options).evaluate(image_batch).values
    for i in range(4):
        alone = metric(name, **options).evaluate(split(image_batch, i)).values
        for key, value in whole.items():
            torch.testing.assert_close(alone[key][0], value[i], rtol=1e-4, atol=1e-7, equal_nan=True)


def test_random_logit_draws_every_other_class_and_never_the_target():
    model = tiny_cnn(classes=5)
    x = images(n=1)
    batch = make_batch(model, x)
    seen = set()
    random_logit = metric("random_logit")
    for index in range(60):
        drawn = random_logit.off_classes(EvalBatch(**{**batch.__dict__, "indices": torch.tensor([index])}), 5)
        seen.add(int(drawn))
    assert seen == set(range(5)) - {int(batch.targets)}


def test_ssim_equals_skimage():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 12, 10)), rng.random((2, 12, 10))
    for i in range(2):
        data_range = max(a[i].max(), b[i].max()) - min(a[i].min(), b[i].min())
        expected = skimage_metrics.structural_similarity(a[i], b[i], data_range=data_range)
        assert ssim(torch.from_numpy(a), torch.from_numpy(b), (7, 7))[i].item() == pytest.approx(expected, rel=1e-9)
        flat = skimage_metrics.structural_similarity(a[i].ravel(), b[i].ravel(), data_range=data_range)
        assert ssim(torch.from_numpy(a.reshape(2, -1)), torch.from_numpy(b.reshape(2, -1)), (7,))[i].item() == \
            pytest.approx(flat, rel=1e-9)


def test_discrete_entropy_equals_numpy_histogram_and_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    rows = np.stack([rng.random(300), np.round(rng.random(300), 2), np.full(300, 0.3)])
    got = discrete_entropy(torch.from_numpy(rows), 100)
    for row, value in zip(rows, got):
        assert value.item() == pytest.approx(stats.entropy(np.histogram(row, bins=100)[0]), abs=1e-12)


def test_efficient_mprt_is_nan_for_a_constant_map(image_batch):
    constant = EvalBatch(**{**image_batch.__dict__, "maps": torch.ones_like(image_batch.maps)})
    values = metric("efficient_mprt").evaluate(constant).values
    assert torch.isnan(values["efficient_mprt"]).all() and (values["complexity_original"] == 0).all()


def test_signal_layout():
    signal = torch.randn(3, 2, 24, generator=torch.Generator().manual_seed(0))
    batch = make_batch(tiny_signal_net(), signal, layout="NCL", letters="NL")
    for name in ("mprt", "efficient_mprt", "random_logit"):
        values = metric(name).evaluate(batch).values
        assert all(v.shape[0] == 3 for v in values.values())
    assert math.isfinite(metric("random_logit").evaluate(batch).values["random_logit"][0].item())


def test_bad_options():
    with pytest.raises(ValueError, match="layer_order"):
        metric("mprt", layer_order="sideways")
    with pytest.raises(ValueError, match="cannot both"):
        metric("mprt", return_average_correlation=True, return_last_correlation=True)
    with pytest.raises(ValueError, match="similarity_func"):
        metric("random_logit", similarity_func="cosine")
    with pytest.raises(ValueError, match="no module with reset_parameters"):
        list(randomised_models(torch.nn.ReLU(), "top_down", 0, "camkit"))
