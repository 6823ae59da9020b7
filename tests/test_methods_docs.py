"""docs/methods.md: the Python example runs as written, and the table lists every registered method."""

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


@pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # random weights may give a flat map
def test_the_methods_example_runs():
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    namespace = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    assert namespace["ablation"].maps.shape == (2, 2, 32, 32)
    assert namespace["fused"].layer == "layer3,layer4" and namespace["augmented"].maps.shape == (2, 32, 32)
    assert namespace["guided"].maps.shape == (2, 3, 32, 32) and namespace["concepts"].maps.shape == (2, 3, 32, 32)


def test_the_table_lists_every_registered_method():
    import camkit

    rows = set(re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), flags=re.M))
    assert set(camkit.available_methods()) <= rows


def test_every_registered_method_has_a_one_line_description():
    from camkit.plugin_manager import registry

    for name, factory in registry("methods").items():
        description = getattr(factory, "description", "")
        assert description and "\n" not in description and len(description) < 100, name
