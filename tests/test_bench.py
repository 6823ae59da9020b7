"""The bench suite on a toy data set and model written by the test: tables, plots, baselines, cache,
errors, and a 2-process torchrun (gloo) run that must give the 1-process numbers."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import camkit
from camkit.plugin_manager import set_plugin_manager

TOY_PLUGIN = textwrap.dedent('''
    """A toy image data set (a bright 4x4 square, left or right half) and a tiny GAP CNN."""
    from camkit.hookspecs import hookimpl


    def build_toy(split="test", seed=0, size=16, count=12, boxes=True):
        import torch

        class Toy(torch.utils.data.Dataset):
            classes = ["left", "right"]
            input_layout = "NCHW"
            domain = "image"

            def __init__(self):
                g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
                self.items = []
                for i in range(count):
                    label = i % 2
                    x = 0.1 * torch.randn(1, size, size, generator=g)
                    y0 = int(torch.randint(0, size - 4, (1,), generator=g))
                    x0 = int(torch.randint(0, size // 2 - 4, (1,), generator=g)) + label * (size // 2)
                    x[:, y0:y0 + 4, x0:x0 + 4] += 1.0
                    item = {"input": x, "label": label}
                    if boxes:
                        item["box"] = (x0, y0, x0 + 4, y0 + 4)
                    self.items.append(item)

            def __len__(self):
                return len(self.items)

            def __getitem__(self, i):
                return self.items[i]

        return Toy()


    def build_tiny(num_classes, width=6):
        import torch.nn as nn

        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


    @hookimpl
    def camkit_register_datasets():
        return {"toy-boxes": build_toy}


    @hookimpl
    def camkit_register_models():
        return {"toy-cnn": build_tiny}
''')

METRICS = ["pointing_game", "energy_pointing_game", "box_localization",
           {"name": "deletion", "options": {"steps": 4}}, {"name": "randomization", "options": {"max_layers": 2}}]


@pytest.fixture
def toy(tmp_path):
    """Config for the toy grid; the plugin file is loaded by the suite (and unloaded after the test)."""
    plugin = tmp_path / "toy_plugin.py"
    plugin.write_text(TOY_PLUGIN)
    set_plugin_manager(None)
    yield {"models": ["toy-cnn"], "datasets": ["toy-boxes"], "methods": ["cam", "gradcam"], "metrics": METRICS,
           "samples": 9, "batch_size": 4, "out": str(tmp_path / "out"), "plugins": [str(plugin)], "device": "cpu"}
    set_plugin_manager(None)


def run(config):
    from camkit_plugins.bench.runner import run_suite

    return run_suite(config, progress=False)


def scalars(out):
    with open(Path(out) / "results.csv") as handle:
        return {(r["method"], r["metric"], r["value"]): float(r["mean"]) for r in csv.DictReader(handle)}


def test_bench_tables_plots_baselines_and_direct_parity(toy):
    records = run(toy)
    methods = ["cam", "gradcam", "baseline-center", "baseline-random"]
    assert len(records) == len(methods) * len(METRICS)
    out = Path(toy["out"])
    table = scalars(out)
    for method in methods:
        assert (method, "pointing_game", "hit_rate") in table
    markdown = (out / "results.md").read_text()
    assert "baseline-center *(baseline)*" in markdown and "| rank | method |" in markdown
    assert (out / "bars_toy-cnn_toy-boxes.png").stat().st_size > 1000
    assert (out / "curves_toy-cnn_toy-boxes.png").stat().st_size > 1000
    # the suite's mean equals the metric evaluated directly on all 9 samples
    from camkit.layout import Layout
    from camkit_plugins.metrics.base import EvalBatch

    dataset = camkit.lookup("datasets", "toy-boxes")(split="test", seed=0)
    torch.manual_seed(0)
    model = camkit.lookup("models", "toy-cnn")(num_classes=2).eval()
    x = torch.stack([dataset[i]["input"] for i in range(9)])
    boxes = torch.tensor([dataset[i]["box"] for i in range(9)])
    labels = torch.tensor([dataset[i]["label"] for i in range(9)])
    result = camkit.explain(model, x, "cam")
    batch = EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=labels,
                      targets=result.targets, maps=result.maps, map_letters="NHW", indices=torch.arange(9),
                      explain=None, box=boxes)
    for name, value in [("pointing_game", "hit_rate"), ("energy_pointing_game", "energy")]:
        direct = camkit.lookup("metrics", name)().evaluate(batch).values[value].mean().item()
        assert table[("cam", name, value)] == pytest.approx(direct, rel=1e-5)
    deletion = camkit.lookup("metrics", "deletion")(steps=4).evaluate(batch).values["auc"].mean().item()
    assert table[("cam", "deletion", "auc")] == pytest.approx(deletion, rel=1e-5)
    # the model ignores baselines: randomisation leaves the centre map's ranking exactly as it was
    assert table[("baseline-center", "randomization", "mean_spearman")] == pytest.approx(1.0)


def test_bench_resumes_without_recomputing(toy, monkeypatch):
    run({**toy, "metrics": METRICS[1:3]})
    cells = sorted(Path(toy["out"], "cells").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    calls = []
    from camkit_plugins.metrics.localization import BoxLocalization, EnergyPointingGame, PointingGame

    for cls in (PointingGame, EnergyPointingGame, BoxLocalization):
        original = cls.evaluate
        monkeypatch.setattr(cls, "evaluate", lambda self, batch, f=original: calls.append(self.name) or f(self, batch))
    records = run({**toy, "metrics": METRICS[:3]})
    assert set(calls) == {"pointing_game"}  # only the new metric ran
    assert all(p.stat().st_mtime_ns == stamps[p] for p in cells)
    assert len(records) == 4 * 3
    header = next(line for line in (Path(toy["out"]) / "results.md").read_text().splitlines() if "| rank |" in line)
    assert header.index("pointing_game") < header.index("energy_pointing_game") < header.index("box_localization")
    calls.clear()
    run({**toy, "metrics": METRICS[:3], "seed": 1})  # a different seed is a different cell
    assert set(calls) == {"pointing_game", "energy_pointing_game", "box_localization"}


def test_metrics_needing_missing_ground_truth_are_reported_not_dropped(toy):
    config = {**toy, "datasets": [{"name": "toy-boxes", "options": {"boxes": False}, "label": "no-boxes"}],
              "metrics": ["pointing_game", {"name": "deletion", "options": {"steps": 2}}]}
    records = run(config)
    skipped = [r for r in records if r.get("skipped")]
    assert len(skipped) == 4 and all(r["metric"] == "pointing_game" for r in skipped)
    assert "pointing_game: skipped, the data set has no mask or box" in (Path(toy["out"]) / "results.md").read_text()


@pytest.mark.parametrize("field, name, listed", [
    ("methods", "gradkam", "gradcam"), ("metrics", "deletio", "deletion"),
    ("datasets", "toy-box", "toy-boxes"), ("models", "toy-cn", "toy-cnn"),
])
def test_unknown_names_list_the_available(toy, field, name, listed):
    suggested = rf"unknown {field[:-1]} '{name}'\. Did you mean .*'{listed}'.*\? Available: .*{listed}"
    with pytest.raises(KeyError, match=suggested):
        run({**toy, field: [name]})


def test_an_unknown_model_may_also_be_a_checkpoint_directory(toy):
    with pytest.raises(KeyError, match=r"Available: .*toy-cnn.*, or a checkpoint directory \(with config.json\)$"):
        run({**toy, "models": ["toy-cn"]})


def test_config_file_and_flags(tmp_path):
    import argparse

    from camkit_plugins.bench import _arguments, config_from_args
    from camkit_plugins.bench.config import load_config, normalize_config

    path = tmp_path / "bench.toml"
    path.write_text('methods = ["cam"]\nsamples = 5\n[[metrics]]\nname = "deletion"\noptions = {steps = 3}\n')
    parser = argparse.ArgumentParser()
    _arguments(parser)
    args = parser.parse_args(["--config", str(path), "--samples", "7", "--models", "a,b", "--datasets", "d"])
    config = normalize_config(config_from_args(args))
    assert config["samples"] == 7 and config["methods"] == ["cam"] and config["models"][1]["name"] == "b"
    assert config["metrics"] == [{"name": "deletion", "options": {"steps": 3}, "label": "deletion"}]
    bad = tmp_path / "bad.json"
    bad.write_text('{"methods": ["cam"],\n "samples": }')
    with pytest.raises(ValueError, match="line 2"):
        load_config(bad)
    with pytest.raises(ValueError, match=r"unknown bench setting 'sample'\. Did you mean 'samples'\?"):
        normalize_config({"sample": 3})


@pytest.mark.slow
def test_torchrun_two_processes_gives_the_one_process_numbers(toy, tmp_path):
    """9 samples over 2 ranks: the sampler pads rank 1 with a duplicate, which must be dropped."""
    config = {**toy,
              "metrics": ["pointing_game", "energy_pointing_game", {"name": "deletion", "options": {"steps": 3}}],
              "methods": ["gradcam"], "plots": False}
    outputs = {}
    for procs in (1, 2):
        out = tmp_path / f"out{procs}"
        path = tmp_path / f"config{procs}.json"
        path.write_text(json.dumps({**config, "out": str(out)}))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", "--standalone",
                   "-m", "camkit", "bench", "--config", str(path), "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[procs] = scalars(out)
        assert "cells; results in" in done.stdout
    assert outputs[1].keys() == outputs[2].keys()
    for key, value in outputs[1].items():
        assert outputs[2][key] == pytest.approx(value, abs=1e-6), key
    counts = {}
    with open(tmp_path / "out2" / "results.csv") as handle:
        counts = {r["value"]: int(r["count"]) for r in csv.DictReader(handle) if r["method"] == "gradcam"}
    assert counts["hit_rate"] == 9  # not 10: the padding duplicate is not counted
    cells = {}
    for procs in (1, 2):  # every per-sample value, gathered from both ranks, at its sample id
        for path in (tmp_path / f"out{procs}" / "cells").glob("*.json"):
            record = json.loads(path.read_text())
            cells.setdefault((record["method"], record["metric"]), []).append(record["per_sample"])
    for (one, two) in cells.values():
        assert one["ids"] == two["ids"] == list(range(9))
        for name, values in one["values"].items():
            assert two["values"][name] == pytest.approx(values, abs=1e-6, nan_ok=True)


def test_checkpoint_models_and_their_recorded_input_size(toy, tmp_path):
    from camkit.checkpoint import save_checkpoint
    from camkit_plugins.bench.runner import _load_plugins

    _load_plugins(toy["plugins"])
    torch.manual_seed(3)
    model = camkit.lookup("models", "toy-cnn")(num_classes=2)
    checkpoint = tmp_path / "toy-ckpt"
    config = {"model": "toy-cnn", "classes": ["left", "right"], "input_size": 16, "mean": [0.5], "std": [0.25]}
    save_checkpoint(checkpoint, model, config)
    metrics = [{"name": "average_drop", "options": {"space": "raw"}, "label": "drop_raw"}, "average_drop"]
    records = run({**toy, "models": [str(checkpoint)], "metrics": metrics})
    assert {r["model"] for r in records} == {"toy-ckpt"}
    raw = next(r for r in records if r["method"] == "cam" and r["metric"] == "drop_raw")
    plain = next(r for r in records if r["method"] == "cam" and r["metric"] == "average_drop")
    assert raw["options"] == {"space": "raw"} and raw["values"]["average_drop"] != plain["values"]["average_drop"]
    assert all(r["key"]["dataset"]["options"] == {"size": 16} for r in records)  # made at the trained size
    save_checkpoint(checkpoint, model, {**config, "input_size": 32})
    records = run({**toy, "models": [str(checkpoint)], "metrics": ["pointing_game"], "methods": ["cam"]})
    assert {tuple(r["key"]["dataset"]["options"].items()) for r in records} == {(("size", 32),)}
    assert {r["counts"]["hit_rate"] for r in records} == {9}
    with pytest.raises(ValueError, match=r"is a checkpoint .*its options \{'output_stride': 8\} cannot change it"):
        run({**toy, "models": [{"name": str(checkpoint), "options": {"output_stride": 8}}], "metrics": metrics})
    explicit = [{"name": "toy-boxes", "options": {"size": 16}}]
    with pytest.raises(ValueError, match="trained on 32 px inputs but the data set's items are 16x16"):
        run({**toy, "models": [str(checkpoint)], "metrics": metrics, "datasets": explicit})


def test_fewer_items_than_samples_warns_and_keys_the_cache_on_the_actual_count(toy):
    config = {**toy, "samples": 20, "metrics": ["pointing_game"], "methods": ["cam"], "plots": False}
    with pytest.warns(UserWarning, match=r"20 samples requested.*'toy-boxes'.*has only 12: evaluating 12"):
        records = run(config)
    assert records and all(r["samples"] == 12 and r["key"]["samples"] == 12 for r in records)
    assert all(r["samples_requested"] == 20 and r["counts"]["hit_rate"] == 12 for r in records)
    with open(Path(toy["out"]) / "results.csv") as handle:
        assert {int(row["samples"]) for row in csv.DictReader(handle)} == {12}
    cells = sorted(Path(toy["out"], "cells").glob("*.json"))
    assert all(json.loads(p.read_text())["key"]["samples"] == 12 for p in cells)
    with pytest.warns(UserWarning, match="30 samples requested"):  # the same 12 items: the same cells
        run({**config, "samples": 30})
    assert sorted(Path(toy["out"], "cells").glob("*.json")) == cells


def test_distributed_cuda_selects_the_local_gpu_and_a_cpu_capable_backend(monkeypatch):
    import torch.distributed as dist

    from camkit.distributed import Distributed

    calls = {"init": [], "device": []}
    state = {"initialized": False, "backend": None}

    def init(backend):
        calls["init"].append(backend)
        state.update(initialized=True, backend=backend)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(dist, "init_process_group", init)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: state["backend"])
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls["device"].append(torch.device(device)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    place = Distributed.from_environment(torch.device("cuda"))
    assert calls["init"] == ["cpu:gloo,cuda:nccl"]  # NCCL alone cannot all_reduce the CPU sums
    assert calls["device"] == [torch.device("cuda", 1)]  # LOCAL_RANK's GPU, not cuda:0 for everyone
    assert (place.rank, place.world, place.started_here, place.collective_device) == (1, 2, True, "cpu")

    state.update(initialized=False)
    calls["device"].clear()
    cpu = Distributed.from_environment(torch.device("cpu"))
    assert calls["init"][-1] == "gloo" and calls["device"] == [] and cpu.collective_device == "cpu"

    state.update(initialized=True, backend="nccl")  # a group somebody else started with NCCL only
    joined = Distributed.from_environment(torch.device("cuda"))
    assert not joined.started_here and joined.collective_device == "cuda:1"


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from camkit.distributed import local_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert local_device("auto") == torch.device("cuda", 0) and local_device("cuda") == torch.device("cuda", 0)
    assert local_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"wants cuda:1 but the machine has 1 visible GPU\(s\).*nproc_per_node"):
        local_device("auto")


def test_ranking_puts_a_missing_value_last():
    from camkit_plugins.bench.report import rank_methods

    def record(method, metric, value, higher=True):
        return {"method": method, "metric": metric, "primary": "v", "values": {"v": value}, "higher_is_better": higher}

    records = [record("good", "pg", 80.0), record("broken", "pg", float("nan")), record("other", "pg", 70.0),
               record("good", "del", 0.2, False), record("broken", "del", float("nan"), False),
               record("other", "del", 0.3, False),
               record("good", "ins", 0.6), record("broken", "ins", 0.61), record("other", "ins", 0.5),
               record("good", "empty", float("nan")), record("broken", "empty", float("nan")),
               record("other", "empty", float("nan"))]  # nobody measured: ignored
    ranks = rank_methods(records)
    assert ranks == {"good": pytest.approx((1 + 1 + 2) / 3), "other": pytest.approx((2 + 2 + 3) / 3),
                     "broken": pytest.approx((3 + 3 + 1) / 3)}
