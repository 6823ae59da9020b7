"""docs/evaluation.md names every registered metric (aliases included) and every bench setting."""

import re
from pathlib import Path

import camkit
from camkit_plugins.bench.config import DEFAULTS

DOC = (Path(__file__).resolve().parents[1] / "docs" / "evaluation.md").read_text()


def test_every_registered_metric_is_documented():
    named = set(re.findall(r"`([a-z0-9_]+)`", DOC))
    missing = sorted(set(camkit.registry("metrics")) - named)
    assert not missing, f"metrics not in docs/evaluation.md: {missing}"


def test_every_bench_setting_is_documented():
    named = set(re.findall(r"`([a-z_]+)`", DOC))
    assert not sorted(set(DEFAULTS) - named), sorted(set(DEFAULTS) - named)


def test_the_statistics_example_runs():
    import numpy as np

    (block,) = [b for b in re.findall(r"```python\n(.*?)```", DOC, flags=re.S) if "statistics as st" in b]
    rng = np.random.default_rng(0)
    namespace = {"gradcam_values": rng.random(20), "layercam_values": rng.random(20) + 0.5,
                 "means_per_seed": np.array([[0.2, 0.7], [0.3, 0.6], [0.25, 0.8]])}
    exec(compile(block, "docs/evaluation.md", "exec"), namespace)
    assert namespace["interval"].low < namespace["interval"].mean < namespace["interval"].high
    assert namespace["stability"].first["layercam"] == 1.0 and namespace["w_over_seeds"] == 1.0
