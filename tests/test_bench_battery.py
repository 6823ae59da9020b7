"""benchmarks/metrics_battery.py's pieces: the forward count equals a metric's stated cost, the replay runs
the same forwards, case lists in either form, and the speed table's bars."""

import importlib.util
from pathlib import Path

import pytest
import torch

import camkit
from camkit.layout import Layout
from camkit_plugins.metrics.base import EvalBatch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "metrics_battery.py"


@pytest.fixture(scope="module")
def battery():
    spec = importlib.util.spec_from_file_location("metrics_battery", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_forward_log_counts_what_deletion_costs_and_replays_it(battery):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(3, 2)).eval()
    x = torch.rand(5, 1, 8, 8)
    maps = torch.rand(5, 8, 8)
    batch = EvalBatch(model=model, inputs=x, input_layout=Layout.parse("NCHW"), labels=None,
                      targets=torch.zeros(5, dtype=torch.long), maps=maps, map_letters="NHW",
                      indices=torch.arange(5), explain=None, chunk_size=7)
    metric = camkit.lookup("metrics", "deletion")(steps=4)
    seconds, log = battery.time_metric(metric, batch)
    assert log.samples == 5 * (4 + 1)  # N x (steps + 1) perturbed inputs, as deletion's docs say
    assert max(shape[0] for shape in log.shapes) <= 7 and seconds > 0
    assert not model._forward_hooks  # the hook is removed
    assert battery.replay_seconds(model, log.shapes, "cpu") > 0


def test_cases_in_either_form_and_the_speed_bars(battery):
    pair = battery.as_case(("Sparseness", {"a": 1}))
    assert (pair["quantus"], pair["camkit_options"], pair["quantus_options"]) == ("Sparseness", {"a": 1}, {"a": 1})
    # the robustness benchmark's mappings: "options" are camkit's, "quantus_options" Quantus's
    mapping = battery.as_case({"label": "L", "camkit": "max_sensitivity", "options": {"nr_samples": 5},
                               "quantus": "MaxSensitivity", "quantus_options": {"nr_samples": 6}})
    assert (mapping["label"], mapping["camkit_options"], mapping["quantus_options"]) == ("L", {"nr_samples": 5},
                                                                                         {"nr_samples": 6})
    # the localisation benchmark's tuples
    row = battery.as_case(("auc", {"k": 1}, "AUC", {"abs": True}, "auc", 1.0))
    assert (row["camkit"], row["camkit_options"], row["quantus"], row["quantus_options"]) == (
        "auc", {"k": 1}, "AUC", {"abs": True})

    class Case:  # the faithfulness benchmark's objects: options depend on (channels, side)
        metric, quantus, camkit, quantus_call = "pixel_flipping", "PixelFlipping", {"features": "element"}, {"x": 1}

        @staticmethod
        def options(channels, side):
            return {"features_in_step": channels * side}

    built = battery.as_case(Case(), 3, 64)
    assert built["camkit_options"] == {"features_in_step": 192, "features": "element"}
    assert built["quantus_options"] == {"features_in_step": 192} and built["quantus_call"] == {"x": 1}
    with pytest.raises(ValueError, match="needs 'quantus' or 'camkit'"):
        battery.as_case({"label": "x"})
    assert battery.camkit_name({"quantus": "X", "camkit": "deletion"}) == "deletion"
    rows = [{"case": "A", "camkit": "a", "camkit_s": 1.0, "quantus_s": 4.0, "speedup": 4.0, "camkit_forwards": 10,
             "quantus_forwards": 40, "forward_s": 0.9, "camkit_over_forwards": 1.0 / 0.9},
            {"case": "B", "camkit": "b", "camkit_s": 1.0, "quantus_s": 8.0, "speedup": 8.0, "camkit_forwards": 0,
             "quantus_forwards": 0, "forward_s": 0.0},
            {"case": "C", "camkit": "", "camkit_error": "LookupError: none", "quantus_s": 2.0}]
    text = "\n".join(battery.speed_markdown(rows, 16, 224, "cpu", 2, ["DEFAULT_CASES"]))
    assert "the battery 6.00x" in text and "2 of 2" in text and "1 of 1 (metrics that forward" in text
    assert "| C | – | error: LookupError: none | 2.000 |" in text


def test_a_quantus_result_that_is_not_per_sample_keeps_its_time_and_says_so(battery):
    from camkit_plugins.metrics.quantus_metrics import QuantusOutputError

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    batch = EvalBatch(model=model, inputs=torch.rand(3, 1, 2, 2), input_layout=Layout.parse("NCHW"), labels=None,
                      targets=torch.zeros(3, dtype=torch.long), maps=torch.rand(3, 2, 2), map_letters="NHW",
                      indices=torch.arange(3), explain=None)

    class Ran:  # a metric that forwards, then returns values that are not per sample
        def __init__(self, error):
            self.error = error

        def evaluate(self, batch):
            batch.model(batch.inputs)
            raise self.error("returned values of shape (12,) for 3 samples")

    seconds, log = battery.time_metric(Ran(QuantusOutputError), batch)
    assert seconds > 0 and log.samples == 3 and "shape (12,)" in log.output_error
    with pytest.raises(ValueError, match="shape"):  # any other failure is not timed
        battery.time_metric(Ran(ValueError), batch)
    assert not model._forward_hooks
    rows = [{"case": "S", "camkit": "s", "camkit_s": 1.0, "quantus_s": 3.0, "speedup": 3.0,
             "quantus_note": log.output_error}]
    assert "| 3.000 (its values are not per sample) | 3.00x |" in "\n".join(
        battery.speed_markdown(rows, 3, 2, "cpu", 1, ["X"]))


def test_short_cases_are_timed_again_from_the_same_state(battery, monkeypatch):
    forwards = []
    timed = battery.time_metric

    def counting(metric, batch):
        seconds, log = timed(metric, batch)
        forwards.append(log.samples)
        return seconds, log

    monkeypatch.setattr(battery, "time_metric", counting)
    case = battery.as_case({"label": "S", "camkit": "sufficiency", "options": {}})
    (row,) = battery.run_speed([case], 2, 32, "cpu")
    # every repeat forwards the batch once for its top-1 classes, as the first run did (not a cached 0)
    assert row["repeats"] == battery.SHORT_REPEATS and forwards == [2] * battery.SHORT_REPEATS
    assert row["camkit_forwards"] == 2 and row["forward_s"] > 0 and "camkit_error" not in row
