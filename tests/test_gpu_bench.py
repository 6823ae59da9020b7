"""benchmarks/speed.py on a tiny case: its agreement check, its ratios and its reports."""

import contextlib
import importlib.util
import json
import os
import subprocess
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


def test_plan_on_cuda_gives_score_cam_its_own_small_fp32_cases(speed, monkeypatch):
    """On a GPU Score-CAM must not run at the main batch: at ResNet-50 batch 256 its masks alone are
    105 GB (pytorch-grad-cam's masked inputs 3x that) and a call is 524,288 forwards."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = speed.parse_args(["--device", "cuda", "--models", "resnet50,resnet18", "--batch-sizes", "256"])
    cases = speed.plan(args)
    main = [(c.model, c.batch, c.dtype) for c, methods in cases if methods != ("scorecam",)]
    assert main == [(m, 256, d) for m in ("resnet50", "resnet18") for d in ("fp32", "bf16", "fp16")]
    assert all("scorecam" not in methods for c, methods in cases if methods != ("scorecam",))
    score = [(c.model, c.batch, c.dtype, c.size) for c, methods in cases if methods == ("scorecam",)]
    assert score == [("resnet50", 8, "fp32", 224), ("resnet18", 8, "fp32", 224)]
    only = speed.plan(speed.parse_args(["--device", "cuda", "--methods", "scorecam", "--models", "resnet50",
                                        "--scorecam-batch", "4"]))
    assert [(c.model, c.batch, methods) for c, methods in only] == [("resnet50", 4, ("scorecam",))]


def _row(speed, method, tool="camkit", **values):
    case = {"device": "cuda", "model": "resnet50", "batch": 256, "dtype": "fp32", "size": 224}
    case.update({k: values.pop(k) for k in list(values) if k in case})
    if values.get("memory_vs_forward") is not None:
        values.setdefault("peak_memory_mb", 1000.0 * values["memory_vs_forward"])
    return speed.Row(**case, tool=tool, method=method, seconds=1.0, images_per_s=1.0, **values)


def test_targets_are_checked_against_the_issue_bars(speed, tmp_path):
    rows = [
        _row(speed, "-", tool="plain forward", throughput_vs_forward=1.0, memory_vs_forward=1.0),
        _row(speed, "cam", throughput_vs_forward=0.99, memory_vs_forward=1.01),
        _row(speed, "gradcam", throughput_vs_forward=0.85, memory_vs_forward=1.1),
        _row(speed, "cam", dtype="bf16", throughput_vs_forward=0.95),
        _row(speed, "scorecam", batch=8, camkit_speedup={"pytorch-grad-cam": 12.5, "torchcam": 3.0}),
    ]
    found = speed.targets(rows)
    by = {(t["target"], t["dtype"], t["headline"]): t for t in found}
    assert by[("cam throughput vs plain forward", "fp32", True)]["met"] is True
    assert by[("gradcam throughput vs plain forward", "fp32", True)]["met"] is False  # 0.85 < 0.9
    assert by[("gradcam peak memory vs inference", "fp32", True)]["met"] is True
    score = by[("scorecam speed-up vs pytorch-grad-cam, same batch", "fp32", True)]
    assert score["met"] is True and score["value"] == 12.5 and score["batch"] == 8
    assert by[("cam throughput vs plain forward", "bf16", False)]["met"] is False  # reported, not headline
    assert [t["headline"] for t in found] == sorted((t["headline"] for t in found), reverse=True)
    assert not any(t["device"] == "cpu" for t in found)  # no CPU rows: no CPU targets
    section = speed.markdown_targets(found)
    assert "Headline cases: 3 of 4 targets met." in section
    assert ("| **gradcam throughput vs plain forward** | >= 0.9 | cuda resnet50 b256 fp32 224px | 0.850 | FAIL |"
            in section)
    # a run without the headline case says so instead of passing silently
    missing = speed.targets([_row(speed, "cam", model="resnet18", throughput_vs_forward=1.0)])
    headline = [t for t in missing if t["headline"]]
    assert len(headline) == 4 and all(t["met"] is None and t["value"] is None for t in headline)
    assert "0 of 4 targets met, 4 not measured" in speed.markdown_targets(missing)
    text = speed.write_reports(tmp_path, {"torch": "x"}, rows, [{"device": "cuda", "model": "resnet50", "batch": 8,
                               "dtype": "fp32", "size": 224, "tool": "torchcam", "method": "scorecam",
                               "error": "OutOfMemoryError: CUDA out of memory"}], with_plot=False)
    assert "## Targets" in text and "## Failures" in text and "torchcam scorecam: OutOfMemoryError" in text
    saved = json.loads((tmp_path / "speed.json").read_text())
    assert len(saved["targets"]) == len(found) and saved["failures"][0]["tool"] == "torchcam"


def test_cpu_run_reports_its_targets(speed, tiny_rows):
    found = speed.targets(tiny_rows)
    assert {t["target"] for t in found} == {"cam time vs its own forward", "gradcam time vs its own forward"}
    measured = [t for t in found if not t["headline"]]  # the tiny case is not the headline case
    assert len(measured) == 2 and all(t["value"] >= 1.0 for t in measured)


def test_a_failing_toolkit_runner_is_recorded_and_the_case_still_measured(speed, monkeypatch):
    @contextlib.contextmanager
    def broken(model, method, x, ids):
        def run():
            raise RuntimeError("CUDA out of memory (simulated)")
        yield run

    monkeypatch.setitem(speed.TOOLKIT_RUNNERS, "captum", broken)
    failures = []
    case = speed.Case(device="cpu", model="resnet18", batch=1, dtype="fp32", size=64)
    rows = speed.measure_case(case, ("cam",), ["captum"], repeats=1, failures=failures, own_forward_methods=())
    assert [(r.tool, r.method) for r in rows] == [("plain forward", "-"), ("camkit", "cam")]
    assert failures and failures[0]["tool"] == "captum" and "simulated" in failures[0]["error"]


KERNELS = Path(__file__).resolve().parents[1] / "benchmarks" / "speed_kernels.py"


def test_speed_kernels_compares_triton_with_torch_through_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    command = [sys.executable, str(KERNELS), "--device", "cpu", "--triton", "on", "--dtypes", "float32,bfloat16",
               "--batch", "2", "--size", "36", "--repeats", "1", "--scorecam-batch", "1", "--scorecam-channels", "3",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "speed_kernels.json").read_text())["rows"]
    triton_rows = [r for r in rows if r["kernel"] == "triton"]
    assert {r["task"] for r in triton_rows} == {"relu+resample+normalize", "normalize", "overlay", "scorecam masks"}
    for r in triton_rows:
        assert r["ms"] > 0 and r["max_abs_diff_vs_torch"] <= (1e-6 if r["dtype"] == "float32" else 1.6e-2), r


def test_rows_of_an_earlier_run_can_join_the_report(speed, tiny_rows, tmp_path):
    speed.write_reports(tmp_path, {"torch": "x"}, tiny_rows, [], with_plot=False)
    loaded = speed.load_rows(tmp_path / "speed.json")
    assert loaded == tiny_rows


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_tiny_case_on_cuda_measures_time_memory_and_agreement(speed, dtype, monkeypatch):
    """The CUDA-only parts of speed.py (synchronised timing, peak memory per runner, autocast
    models, Score-CAM in its own case) on a case small enough for the test suite."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # agreement checked at 1e-3
    failures = []
    case = speed.Case(device="cuda", model="resnet18", batch=2, dtype=dtype, size=64)
    rows = speed.measure_case(case, ("cam", "gradcam", "scorecam"), speed.installed_toolkits(), repeats=2,
                              scorecam_chunk=64, failures=failures)
    assert failures == []
    by_key = {(r.tool, r.method): r for r in rows}
    assert {("camkit", "cam"), ("camkit", "gradcam"), ("camkit", "scorecam")} <= set(by_key)
    for row in rows:
        assert row.seconds > 0 and row.peak_memory_mb > 0 and row.memory_vs_forward > 0
        assert row.own_forward_ratio is None  # CPU only
        if row.tool in speed.TOOLKITS and row.method != "scorecam":
            assert row.agrees, (row.tool, row.method, row.max_abs_diff)
    assert by_key[("camkit", "gradcam")].memory_vs_forward < 3
    found = speed.targets(rows)
    assert {t["target"] for t in found} >= {"cam throughput vs plain forward", "gradcam peak memory vs inference"}
