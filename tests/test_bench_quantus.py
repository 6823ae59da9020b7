"""quantus:<Class> metrics: the wrapper gives Quantus's own per-sample numbers (called directly on the same
numpy arrays with the same seed), inside camkit bench too; clear errors for unknown names and options,
aggregated-only results, and a missing Quantus."""

import sys

import numpy as np
import pytest
import torch

import camkit
from camkit.layout import Layout
from camkit.plugin_manager import UnknownNameError
from camkit_plugins.metrics.base import EvalBatch
from camkit_plugins.metrics.registry import make_metric
from quantus_support import import_quantus


def tiny_batch(n=4, size=16):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(n, 3, size, size)
    result = camkit.explain(model, x, "gradcam")

    def explain(m, inputs, targets):
        return camkit.explain(m, inputs, "gradcam", targets=targets).maps

    return EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=result.targets,
                     targets=result.targets, maps=result.maps, map_letters="NHW", indices=torch.arange(10, 10 + n),
                     explain=explain, seed=3)


def direct(quantus, batch, name, seed, call=None, **options):
    """Quantus called as a Quantus user would, on numpy copies, with numpy's global state seeded."""

    def explain_func(model, inputs, targets, **_):
        maps = camkit.explain(model, torch.from_numpy(inputs).float(), "gradcam",
                              targets=torch.as_tensor(targets).long()).maps
        return maps.numpy()[:, None]

    np.random.seed(seed)
    metric = getattr(quantus, name)(**options, return_aggregate=False, disable_warnings=True)
    return np.asarray(metric(model=batch.model, x_batch=batch.inputs.numpy(), y_batch=batch.targets.numpy(),
                             a_batch=batch.maps.numpy()[:, None], explain_func=explain_func, device="cpu",
                             **(call or {})), dtype=np.float64)


@pytest.mark.parametrize("name, options", [
    ("FaithfulnessCorrelation", {"nr_runs": 10, "subset_size": 16}),  # random subsets from numpy's state
    ("MaxSensitivity", {"nr_samples": 2}),  # re-explains noisy inputs through the bench's method
    ("Sparseness", {}),
])
def test_wrapper_equals_quantus_called_directly(name, options):
    quantus = import_quantus()
    batch = tiny_batch()
    metric = make_metric(f"quantus:{name}", **options)
    state = np.random.get_state()
    values = metric.evaluate(batch).values["score"].numpy()
    assert np.array_equal(np.random.get_state()[1], state[1])  # numpy's global state restored
    expected = direct(quantus, batch, name, metric.numpy_seed(batch), **options)
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-7)
    assert values.shape == (4,) and metric.higher_is_better == (name != "MaxSensitivity")


def test_curves_and_layers_become_per_sample_values():
    import_quantus()
    batch = tiny_batch()
    flipping = make_metric("quantus:PixelFlipping", features_in_step=64).evaluate(batch).values
    assert flipping["curve"].shape == (4, 12) and flipping["score"].shape == (4,)
    curve = flipping["curve"].numpy()
    np.testing.assert_allclose(flipping["score"].numpy(), ((curve[:, 1:] + curve[:, :-1]) / 2).mean(axis=1))
    mprt = make_metric("quantus:MPRT").evaluate(batch)
    assert mprt.values["layers"].shape[0] == 4 and len(mprt.labels["layers"]) == mprt.values["layers"].shape[1]
    with pytest.raises(ValueError, match="returned aggregated values"):
        make_metric("quantus:Sparseness")._per_sample({"5": 0.3, "10": 0.2}, 4)


def test_quantus_metric_inside_the_bench_equals_quantus_on_the_bench_maps(tmp_path):
    quantus = import_quantus()
    from camkit.plugin_manager import set_plugin_manager
    from camkit_plugins.bench.runner import run_suite
    from test_bench_statistics import MASK_PLUGIN

    plugin = tmp_path / "mask_plugin.py"
    plugin.write_text(MASK_PLUGIN)
    set_plugin_manager(None)
    try:
        records = run_suite({"models": ["toy-tiny"], "datasets": ["toy-masks"], "methods": ["gradcam"],
                             "metrics": ["quantus:Sparseness", {"name": "quantus:PointingGame", "label": "qpg"},
                                         "pointing_game"],
                             "samples": 6, "batch_size": 3, "out": str(tmp_path / "out"), "plugins": [str(plugin)],
                             "device": "cpu", "plots": False, "interval_resamples": 50, "rank_bootstrap": 10},
                            progress=False)
        dataset = camkit.lookup("datasets", "toy-masks")(split="test", seed=0)
        torch.manual_seed(0)
        model = camkit.lookup("models", "toy-tiny")(num_classes=2).eval()
    finally:
        set_plugin_manager(None)
    x = torch.stack([dataset[i]["input"] for i in range(6)])
    masks = torch.stack([dataset[i]["mask"] for i in range(6)])
    result = camkit.explain(model, x, "gradcam")
    a, s = result.maps.numpy()[:, None], masks.numpy()[:, None].astype(np.float32)
    cell = {r["metric"]: r for r in records if r["method"] == "gradcam"}
    sparseness = quantus.Sparseness(return_aggregate=False, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=result.targets.numpy(), a_batch=a, device="cpu")
    np.testing.assert_allclose(cell["quantus:Sparseness"]["per_sample"]["values"]["score"], sparseness, rtol=1e-5)
    hits = quantus.PointingGame(return_aggregate=False, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=result.targets.numpy(), a_batch=a, s_batch=s, device="cpu")
    camkit_hits = np.array(cell["pointing_game"]["per_sample"]["values"]["hit_rate"]) / 100
    np.testing.assert_array_equal(np.array(cell["qpg"]["per_sample"]["values"]["score"]), np.array(hits, float))
    np.testing.assert_array_equal(camkit_hits, np.array(hits, float))  # maps with one clear maximum: they agree


def test_unknown_quantus_names_and_options_and_a_missing_quantus(monkeypatch):
    import_quantus()
    with pytest.raises(UnknownNameError, match=r"unknown Quantus metric 'FaithfulnesCorrelation'\. Did you mean "
                                               r"'FaithfulnessCorrelation'"):
        make_metric("quantus:FaithfulnesCorrelation")
    with pytest.raises(UnknownNameError, match=r"metric 'quantus:FaithfulnessCorrelation': unknown option 'nr_run'\. "
                                               r"Did you mean 'nr_runs'"):
        make_metric("quantus:FaithfulnessCorrelation", nr_run=3)
    with pytest.raises(UnknownNameError, match=r"unknown call option 'softmaks'"):
        make_metric("quantus:Sparseness", call={"softmaks": True})
    with pytest.raises(UnknownNameError, match="unknown option 'return_aggregate'"):
        make_metric("quantus:Sparseness", return_aggregate=True)  # the bench needs per-sample values
    with pytest.raises(ValueError, match="quantus:Focus needs its custom_batch"):
        make_metric("quantus:Focus")
    monkeypatch.setitem(sys.modules, "quantus", None)  # as if Quantus were not installed
    with pytest.raises(ModuleNotFoundError, match=r"quantus: metrics need Quantus 0\.6 \(pip install quantus==0\.6\.0"):
        make_metric("quantus:Sparseness")
