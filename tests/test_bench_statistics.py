"""camkit bench with statistics: cells keep per-sample values with their sample ids, every table gets a
bootstrap interval, paired tests and rank stability (checked against the statistics computed by hand
from the cells), and the bad inputs of issue 21 (unknown metric options, masks of the wrong shape,
empty masks, NaN maps, a batch too small for a metric that compares samples) each give one clear
error or NaN left out and counted."""

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from camkit.plugin_manager import UnknownNameError, set_plugin_manager

MASK_PLUGIN = textwrap.dedent('''
    """A toy image data set with masks (a bright 4x4 square, left or right half), a tiny GAP CNN and a
    metric that compares the samples of a batch."""
    from camkit.hookspecs import hookimpl
    from camkit_plugins.metrics.base import Metric, MetricValues, require_batch_size


    def build_masks(split="test", seed=0, size=16, count=10, mask_size=None, empty=()):
        import torch

        class Masks(torch.utils.data.Dataset):
            classes = ["left", "right"]
            input_layout = "NCHW"

            def __init__(self):
                g = torch.Generator().manual_seed(seed + 1)
                self.items = []
                for i in range(count):
                    label = i % 2
                    x = 0.1 * torch.randn(1, size, size, generator=g)
                    y0 = int(torch.randint(0, size - 4, (1,), generator=g))
                    x0 = int(torch.randint(0, size // 2 - 4, (1,), generator=g)) + label * (size // 2)
                    x[:, y0:y0 + 4, x0:x0 + 4] += 1.0
                    side = mask_size or size
                    mask = torch.zeros(side, side, dtype=torch.bool)
                    if i not in empty:
                        mask[y0:y0 + 4, x0:x0 + 4] = True
                    self.items.append({"input": x, "label": label, "mask": mask})

            def __len__(self):
                return len(self.items)

            def __getitem__(self, i):
                return self.items[i]

        return Masks()


    def build_tiny(num_classes, width=4):
        import torch.nn as nn

        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(width, num_classes))


    class BatchContrast(Metric):
        """Each map's mean minus the batch's mean map mean (needs two samples per batch)."""

        name = "batch_contrast"
        primary = "contrast"
        min_batch = 2
        sizes = []

        def evaluate(self, batch):
            require_batch_size(batch, 2, self.name)
            BatchContrast.sizes.append(int(batch.maps.shape[0]))
            means = batch.flat_maps().mean(dim=1)
            return MetricValues({"contrast": means - means.mean()})


    @hookimpl
    def camkit_register_datasets():
        return {"toy-masks": build_masks}


    @hookimpl
    def camkit_register_models():
        return {"toy-tiny": build_tiny}


    @hookimpl
    def camkit_register_metrics():
        return {"batch_contrast": BatchContrast}
''')


@pytest.fixture
def grid(tmp_path):
    plugin = tmp_path / "mask_plugin.py"
    plugin.write_text(MASK_PLUGIN)
    set_plugin_manager(None)
    yield {"models": ["toy-tiny"], "datasets": ["toy-masks"], "methods": ["gradcam", "gradcam++"],
           "metrics": ["pointing_game", "energy_pointing_game"], "samples": 10, "batch_size": 4,
           "out": str(tmp_path / "out"), "plugins": [str(plugin)], "device": "cpu", "interval_resamples": 300,
           "rank_bootstrap": 40, "plots": True}
    set_plugin_manager(None)


def run(config):
    from camkit_plugins.bench.runner import run_suite

    return run_suite(config, progress=False)


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_cells_keep_per_sample_values_and_tables_get_intervals_tests_and_rank_stability(grid):
    from camkit_plugins.bench.summary import _seed
    from camkit_plugins.metrics.statistics import bootstrap_interval, kendalls_w

    records = run(grid)
    out = Path(grid["out"])
    energy = {r["method"]: r for r in records if r["metric"] == "energy_pointing_game"}
    cells = {(c["method"], c["metric"]): c for c in map(json.loads, map(Path.read_text, (out / "cells").glob("*")))}
    for record in energy.values():  # the cell file holds the ids and every per-sample value
        cell = cells[(record["method"], "energy_pointing_game")]
        assert cell["per_sample"]["ids"] == list(range(10))
        per_sample = np.array(cell["per_sample"]["values"]["energy"])
        assert per_sample.shape == (10,) and record["values"]["energy"] == pytest.approx(per_sample.mean())
    table = {(r["method"], r["metric"], r["value"]): r for r in rows(out / "results.csv")}
    row = table[("gradcam", "energy_pointing_game", "energy")]
    expected = bootstrap_interval(energy["gradcam"]["per_sample"]["values"]["energy"], resamples=300,
                                  seed=_seed(0, "toy-tiny", "toy-masks", "gradcam", "energy_pointing_game", "energy"))
    assert (float(row["low"]), float(row["high"])) == pytest.approx((expected.low, expected.high))
    assert float(row["low"]) <= float(row["mean"]) <= float(row["high"]) and row["nan"] == "0"
    tests = [t for t in rows(out / "paired_tests.csv") if t["metric"] == "energy_pointing_game"]
    assert len(tests) == 6  # 4 methods (2 + 2 baselines): every pair
    pair = next(t for t in tests if {t["a"], t["b"]} == {"gradcam", "baseline-random"})
    a, b = (np.array(energy[m]["per_sample"]["values"]["energy"]) for m in (pair["a"], pair["b"]))
    assert float(pair["p"]) == pytest.approx(stats.wilcoxon(a - b).pvalue)
    assert float(pair["p_holm"]) >= float(pair["p"])
    ranks = [r for r in rows(out / "rank_stability.csv") if r["metric"] == "energy_pointing_game"]
    assert len(ranks) == 4 and sum(float(r["p_rank_1"]) for r in ranks) >= 1.0
    w = float(ranks[0]["kendalls_w"])
    assert 0.0 <= w <= 1.0 and kendalls_w([[1, 2, 3], [1, 2, 3]]) == 1.0
    markdown = (out / "results.md").read_text()
    assert f"{float(row['mean']):.4g} [{float(row['low']):.4g}, {float(row['high']):.4g}]" in markdown
    assert "Paired tests: Wilcoxon signed-rank" in markdown and "| metric | Kendall's W | P(rank 1) |" in markdown
    assert (out / "ranks_toy-tiny_toy-masks.png").stat().st_size > 1000
    assert (out / "bars_toy-tiny_toy-masks.png").stat().st_size > 1000


def test_statistics_settings_change_no_cell_and_cells_resume(grid, monkeypatch):
    run({**grid, "plots": False})
    cells = {p: p.stat().st_mtime_ns for p in Path(grid["out"], "cells").glob("*.json")}
    from camkit_plugins.metrics.localization import PointingGame

    monkeypatch.setattr(PointingGame, "evaluate", lambda *a: pytest.fail("a cached cell was recomputed"))
    run({**grid, "plots": False, "interval_resamples": 0, "interval": "bca", "significance": 0.01})
    assert {p: p.stat().st_mtime_ns for p in cells} == cells
    assert {r["low"] for r in rows(Path(grid["out"]) / "results.csv")} == {""}  # bootstrap = 0: no intervals


def test_unknown_metric_options_name_close_matches_in_the_bench_and_the_api(grid):
    from camkit_plugins.metrics.registry import make_metric

    with pytest.raises(UnknownNameError, match=r"metric 'deletion': unknown option 'step'\. Did you mean 'steps'"):
        run({**grid, "metrics": [{"name": "deletion", "options": {"step": 3}}]})
    with pytest.raises(UnknownNameError, match=r"unknown option 'tolerence'\. Did you mean 'tolerance'"):
        make_metric("pointing_game", tolerence=2)
    with pytest.raises(UnknownNameError, match=r"unknown metric 'deletio'\. Did you mean 'deletion'"):
        make_metric("deletio")
    assert make_metric("deletion", steps=3).options()["steps"] == 3
    with pytest.raises(ValueError, match="'interval_resamples' must be a non-negative integer"):
        run({**grid, "interval_resamples": -1})
    with pytest.raises(ValueError, match="interval='student': choose one of percentile, bca"):
        run({**grid, "interval": "student"})


def test_masks_whose_shape_does_not_match_the_maps_are_a_clear_error(grid):
    config = {**grid, "datasets": [{"name": "toy-masks", "options": {"mask_size": 8}}], "methods": ["gradcam"]}
    with pytest.raises(ValueError, match=r"ground-truth mask of shape \(4, 8, 8\) does not match maps of shape "
                                         r"\(4, 16, 16\)"):
        run(config)


def test_empty_masks_are_nan_left_out_of_the_mean_and_counted(grid):
    config = {**grid, "datasets": [{"name": "toy-masks", "options": {"empty": [1, 6]}}], "methods": ["gradcam"],
              "metrics": ["pointing_game"], "plots": False}
    records = run(config)
    record = next(r for r in records if r["method"] == "gradcam")
    values = np.array(record["per_sample"]["values"]["hit_rate"])
    assert np.isnan(values[[1, 6]]).all() and np.isfinite(np.delete(values, [1, 6])).all()
    assert record["counts"]["hit_rate"] == 8 and record["nan"]["hit_rate"] == 2
    assert record["values"]["hit_rate"] == pytest.approx(np.nanmean(values))
    row = next(r for r in rows(Path(grid["out"]) / "results.csv") if r["method"] == "gradcam")
    assert (row["count"], row["nan"]) == ("8", "2")
    assert ("pointing_game / gradcam: 2 of 10 samples have no hit_rate (NaN: undefined for them), left out"
            in (Path(grid["out"]) / "results.md").read_text())


def test_nan_maps_are_scored_nan_left_out_and_reported(grid, monkeypatch):
    from camkit_plugins.bench.runner import MapMaker

    original = MapMaker.__call__

    def nan_for_sample_3(self, model, inputs, targets, indices):
        maps = original(self, model, inputs, targets, indices)
        if self.method == "gradcam" and 3 in indices.tolist():
            maps = maps.clone()
            maps[indices.tolist().index(3), 0, 0] = float("nan")
        return maps

    monkeypatch.setattr(MapMaker, "__call__", nan_for_sample_3)
    records = run({**grid, "plots": False})
    for record in (r for r in records if r["method"] == "gradcam"):
        assert record["nan_maps"] == 1
        values = np.array(record["per_sample"]["values"][record["primary"]])
        assert np.isnan(values[3]) and np.isfinite(np.delete(values, 3)).all()
        assert record["values"][record["primary"]] == pytest.approx(np.delete(values, 3).mean())
    assert all(r["nan_maps"] == 0 for r in records if r["method"] != "gradcam")
    assert "gradcam: 1 maps contained NaN" in (Path(grid["out"]) / "results.md").read_text()


def test_a_metric_comparing_samples_never_gets_a_batch_of_one(grid):
    import camkit

    config = {**grid, "metrics": ["batch_contrast"], "methods": ["gradcam"], "plots": False, "samples": 9}
    records = run(config)  # batches of 4: 4, 5 (the last sample joins the batch before)
    metric = camkit.lookup("metrics", "batch_contrast")
    assert metric.sizes == [4, 5] * 3 and all(r["counts"]["contrast"] == 9 for r in records)
    with pytest.raises(ValueError, match=r"'batch_contrast' compares the samples of a batch and needs at least 2 "
                                         r"per batch: got batch_size=1"):
        run({**config, "batch_size": 1, "out": grid["out"] + "-one"})
    from camkit.layout import Layout
    from camkit_plugins.metrics.base import EvalBatch

    lone = EvalBatch(model=None, inputs=torch.zeros(1, 1, 4, 4), input_layout=Layout.parse("NCHW"), labels=None,
                     targets=None, maps=torch.zeros(1, 4, 4), map_letters="NHW", indices=torch.arange(1),
                     explain=None)
    with pytest.raises(ValueError, match="needs at least 2; got a batch of 1"):
        metric().evaluate(lone)


def test_meta_evaluation_scores_a_metric_blind_to_the_inputs_as_perfectly_resilient(grid, monkeypatch):
    # batch_contrast reads only the maps: the input test (maps of the clean inputs scored on noisy ones)
    # cannot move it, so its noise-resilience scores are exactly 1 and it never "reacts" (0, or NaN when
    # no prediction changes)
    config = {**grid, "metrics": ["batch_contrast", "energy_pointing_game"], "plots": False, "samples": 8,
              "meta_evaluation": {"metrics": ["batch_contrast", "energy_pointing_game"], "perturbations": 2,
                                  "iterations": 1}}
    run(config)
    out = Path(grid["out"])
    meta = {(r["metric"], r["test"]): r for r in rows(out / "meta_evaluation.csv")}
    assert set(meta) == {(m, t) for m in ("batch_contrast", "energy_pointing_game") for t in ("model", "input")}
    blind = meta[("batch_contrast", "input")]
    assert float(blind["IAC_NR"]) == 1.0 and float(blind["IEC_NR"]) == 1.0
    assert blind["IAC_AR"] in ("0.0", "nan") and blind["IEC_AR"] in ("0.0", "nan")
    for row in meta.values():
        values = [float(row[k]) for k in ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC")]
        assert all(0.0 <= v <= 1.0 for v in values if not np.isnan(v))
    assert "## Meta-evaluation of the metrics (MetaQuantus)" in (out / "results.md").read_text()
    from camkit_plugins.bench import meta as meta_module

    monkeypatch.setattr(meta_module, "meta_evaluate", lambda *a: pytest.fail("a cached meta-evaluation was rerun"))
    run(config)
    with pytest.raises(UnknownNameError, match=r"meta_evaluation: unknown metric 'energy_pointing_gam'\. Did you mean "
                                               r"'energy_pointing_game'"):
        run({**config, "meta_evaluation": ["energy_pointing_gam"]})


def test_meta_perturbations_are_seeded_per_sample_and_leave_the_model_alone():
    from camkit_plugins.bench.meta import perturbed_inputs, perturbed_model

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in model.parameters()]
    noisy = perturbed_model(model, 0.5, seed=7)
    generator = torch.Generator().manual_seed(7)
    for original, changed, kept in zip(before, noisy.parameters(), model.parameters()):
        expected = original * (1 + 0.5 * torch.randn(original.shape, generator=generator))
        torch.testing.assert_close(changed.detach(), expected)
        assert torch.equal(kept, original)
    x = torch.rand(4, 1, 5, 5)
    together = perturbed_inputs(x, torch.arange(4), 0.1, 3, "meta:input")
    alone = torch.cat([perturbed_inputs(x[i:i + 1], torch.tensor([i]), 0.1, 3, "meta:input") for i in range(4)])
    lower = x.min()
    torch.testing.assert_close(together, alone.clamp_min(lower))  # the same noise in any batch
    assert (together - x).abs().max() <= 0.1 + 1e-6 and not torch.equal(together, x)


def test_rank_stability_across_seeds_equals_kendalls_w_of_the_seeds_means(grid):
    from camkit_plugins.metrics.statistics import kendalls_w

    config = {**grid, "metrics": ["energy_pointing_game"], "plots": False, "stability_seeds": [3, 0, 5]}
    run(config)
    out = Path(grid["out"])
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert sorted({c["key"]["seed"] for c in cells}) == [0, 3, 5]  # the config's seed once
    methods = ["gradcam", "gradcam++", "baseline-center", "baseline-random"]
    means = {(c["key"]["seed"], c["method"]): c["values"]["energy"] for c in cells}
    rankings = [stats.rankdata([-means[(seed, m)] for m in methods]) for seed in (0, 3, 5)]
    table = {r["method"]: r for r in rows(out / "seed_stability.csv")}
    assert set(table) == set(methods) and table["gradcam"]["seeds"] == "0 3 5"
    assert float(table["gradcam"]["kendalls_w"]) == pytest.approx(kendalls_w(rankings))
    first = {m: np.mean([r[i] == r.min() for r in rankings]) for i, m in enumerate(methods)}
    assert {m: float(table[m]["p_rank_1"]) for m in methods} == pytest.approx(first)
    assert "W across seeds" in (out / "results.md").read_text()
    with pytest.raises(ValueError, match="'stability_seeds' must be a list of integer seeds"):
        run({**config, "stability_seeds": 3})
