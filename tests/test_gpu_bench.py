"""benchmarks/speed.py on a tiny case: its agreement check, its ratios and its reports."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("camkit_bench_speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def tiny_rows(speed):
    case = speed.Case(device="cpu", model="resnet18", batch=2, dtype="fp32", size=64)  # 2x2 features
    return speed.measure_case(case, ("cam", "gradcam"), speed.installed_toolkits(), repeats=1)


def test_agreement_check_detects_different_work(speed):
    maps = torch.rand(3, 16, 16)
    assert speed.max_abs_difference(maps, maps) == 0
    # "normalise then resize" vs "resize then normalise" differ by an affine map: not a difference
    assert speed.max_abs_difference(maps, 0.5 * maps + 2) < 1e-6
    assert speed.max_abs_difference(maps, maps.flip(-1)) > 0.3
    with pytest.raises(ValueError, match="cannot be compared"):
        speed.max_abs_difference(maps, maps[:, :8])


def test_tiny_case_rows_compare_the_same_work(speed, tiny_rows):
    by_key = {(r.tool, r.method): r for r in tiny_rows}
    for method in ("cam", "gradcam"):  # a call includes its forward: never below 1
        assert 1.0 <= by_key[("camkit", method)].own_forward_ratio < 10
    assert {("plain forward", "-"), ("camkit", "cam"), ("camkit", "gradcam")} <= set(by_key)
    assert by_key[("plain forward", "-")].throughput_vs_forward == 1.0
    for row in tiny_rows:
        assert row.seconds > 0 and row.images_per_s == pytest.approx(2 / row.seconds)
        assert row.time_vs_forward * row.throughput_vs_forward == pytest.approx(1.0)
    others = [r for r in tiny_rows if r.tool in speed.TOOLKITS]
    for row in others:  # same maps as camkit: every installed toolkit has gradcam, torchcam also cam
        assert row.agrees, (row.tool, row.method, row.max_abs_diff)
        assert row.max_abs_diff < speed.AGREEMENT_TOLERANCE
    for tool in speed.installed_toolkits():
        assert (tool, "gradcam") in by_key
        camkit_row = by_key[("camkit", "gradcam")]
        assert camkit_row.camkit_speedup[tool] == pytest.approx(by_key[(tool, "gradcam")].seconds / camkit_row.seconds)


def test_reports(speed, tiny_rows, tmp_path):
    table = speed.markdown(tiny_rows)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + len(tiny_rows)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    speed.plot(tiny_rows, tmp_path / "speed.png")
    assert (tmp_path / "speed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps([speed.asdict(r) for r in tiny_rows])  # serialisable


def test_plan_quick_is_one_cpu_case_plus_a_small_scorecam_case(speed):
    args = speed.parse_args(["--device", "cpu", "--quick"])
    cases = speed.plan(args)
    assert [(c.model, c.batch, c.dtype, c.size) for c, _ in cases] == [("resnet18", 8, "fp32", 224),
                                                                      ("resnet18", 1, "fp32", 48)]
    assert "scorecam" not in cases[0][1] and cases[1][1] == ("scorecam",)
    with pytest.raises(SystemExit, match="unknown method"):
        speed.plan(speed.parse_args(["--methods", "cam,nocam"]))
