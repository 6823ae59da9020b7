"""A custom skeleton graph given as a JSON file path (``-d graph=my_graph.json``) on every command and in
bench configs; the checkpoint carries the graph itself, so explain / eval need neither the flag nor the
file again."""

import json

import numpy as np
import pytest

from camkit.checkpoint import load_checkpoint
from camkit.cli import main
from camkit_plugins.skeleton.graph import get_graph, portable_graph

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")

GRAPH = {"joints": ["hip", "chest", "head", "left hand", "right hand"],
         "bones": [[0, 1], [1, 2], [1, 3], [1, 4]], "center": 1}
TINY = ["--model", "stgcn", "-m", "config=tiny", "--epochs", "1", "--batch-size", "4"]


@pytest.fixture(scope="module")
def npy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("five-joints")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        np.save(root / f"{split}_data.npy", rng.normal(size=(6, 3, 8, 5, 1)).astype(np.float32))
        (root / f"{split}_label.txt").write_text("\n".join(str(i % 2) for i in range(6)))
    graph_file = root / "my_graph.json"
    graph_file.write_text(json.dumps(GRAPH))
    return root, graph_file


def test_a_graph_file_is_the_graph_it_holds(tmp_path):
    path = tmp_path / "five.json"
    path.write_text(json.dumps(GRAPH))
    graph = get_graph(str(path))
    assert graph.name == "five" and graph.joints == tuple(GRAPH["joints"]) and graph.center == 1
    assert graph.bones == ((0, 1), (1, 2), (1, 3), (1, 4))
    assert get_graph(portable_graph(str(path))) == graph and portable_graph("ntu25") == "ntu25"
    with pytest.raises(FileNotFoundError, match="skeleton graph file .*missing.json: no such file"):
        get_graph(str(tmp_path / "missing.json"))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a JSON object with joints, bones and center, not list"):
        get_graph(str(tmp_path / "list.json"))
    (tmp_path / "bad.json").write_text(json.dumps({**GRAPH, "bones": [[0, 7]]}))
    with pytest.raises(ValueError, match=r"bad.json: graph 'bad': edges \[\(0, 7\)\]"):
        get_graph(str(tmp_path / "bad.json"))


def test_graph_file_through_train_explain_eval_and_bench(npy_data, tmp_path):
    root, graph_file = npy_data
    moved = tmp_path / "graph.json"  # the file given at training time
    moved.write_text(graph_file.read_text())
    data = ["--dataset", "skeleton-npy", "-d", f"root={root}"]
    out = tmp_path / "model"
    assert main(["train", "skeleton", *data, "-d", f"graph={moved}", *TINY, "--out", str(out)]) == 0
    model, config = load_checkpoint(out)
    carried = {"name": "graph", **GRAPH}
    assert config["model_options"]["graph"] == carried and config["graph"] == carried
    assert config["dataset_options"]["graph"] == carried and model.graph == get_graph(GRAPH | {"name": "graph"})
    moved.unlink()  # explain and eval need neither the flag nor the file

    explained = tmp_path / "explained"
    assert main(["explain", "skeleton", "--checkpoint", str(out), "--count", "2", "--out", str(explained)]) == 0
    assert np.load(explained / "maps.npy").shape == (2, 8, 5)
    top = json.loads((explained / "summary.json").read_text())[0]["top joints"]
    assert set(top) <= set(GRAPH["joints"]) and len(top) == 3
    with pytest.warns(RuntimeWarning, match="this data has 5 joints"):
        assert main(["eval", "skeleton", "--checkpoints", str(out), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "results.json").is_file()
    # told again with a file, explain reads it too
    assert main(["explain", "skeleton", "--checkpoint", str(out), *data, "-d", f"graph={graph_file}", "--count", "1",
                 "--out", str(tmp_path / "again")]) == 0

    from camkit_plugins.bench.runner import run_suite

    dataset = {"name": "skeleton-npy", "options": {"root": str(root), "graph": str(graph_file)}}
    stgcn = {"name": "stgcn", "options": {"graph": str(graph_file), "config": "tiny", "in_channels": 3, "persons": 1}}
    records = run_suite({"models": [str(out), stgcn], "datasets": [dataset], "methods": ["gradcam"],
                         "metrics": ["deletion"], "samples": 4, "batch_size": 4, "out": str(tmp_path / "bench"),
                         "device": "cpu", "plots": False}, progress=False)
    explained_cells = [r for r in records if r["method"] == "gradcam"]
    assert len(explained_cells) == 2 and all(0 <= r["values"]["auc"] <= 1 for r in explained_cells)
