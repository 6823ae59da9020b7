"""The Python examples in the docs run as written (on random-weight models and generated data)."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")
def test_the_image_python_example_runs():
    (block,) = python_blocks(DOCS / "images.md")
    namespace = {}
    exec(compile(block, "docs/images.md", "exec"), namespace)
    assert namespace["result"].maps.shape == (8, 64, 64) and namespace["boxes"].shape == (8, 4)
    assert namespace["iou"].shape == (8,) and namespace["overlays"].shape == (8, 3, 64, 64)
