"""benchmarks/explain_speed.py on a tiny case: both decode paths explain every file and the report
holds their throughput relative to the CAM call alone."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "explain_speed.py"


@pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")
def test_explain_speed_reports_both_decode_paths(tmp_path):
    spec = importlib.util.spec_from_file_location("camkit_explain_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--count", "6", "--photo-size", "20x28", "--size", "32", "--batch-size", "4",
                        "--workers", "0", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "explain_speed.json").read_text())
    rows = report["rows"]
    assert len(rows) == 3 and rows[0]["vs_cam_call"] == 1.0
    assert all(row["images_per_s"] > 0 and row["vs_cam_call"] == row["images_per_s"] / rows[0]["images_per_s"]
               for row in rows)
    assert (report["setting"]["photo"] == "20x28 JPEG"
            and "| camkit explain" in (tmp_path / "explain_speed.md").read_text())
