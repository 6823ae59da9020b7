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
