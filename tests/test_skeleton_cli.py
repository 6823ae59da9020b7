"""Skeleton commands: tiny train -> explain -> eval through the CLI, and DDP training with torchrun."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import camkit
from camkit.checkpoint import load_checkpoint
from camkit.cli import main

DATA = ["-d", "size=24", "-d", "frames=16"]


@pytest.mark.slow
def test_train_explain_eval_through_the_cli(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    for out, streams in ((one, 1), (two, 2)):
        code = main(["train", "skeleton", *DATA, "--streams", str(streams), "-m", "config=tiny",
                     "--occlude-parts", "0.5", "-m", "mask_rule=topk", "-m", "mask_amount=8", "--epochs", "1",
                     "--out", str(out)])
        assert code == 0
    model, config = load_checkpoint(two)
    assert config["model_options"]["streams"] == 2 and config["input_layout"] == "NCTVM"
    assert len(model.streams) == 2 and model.mask_rule.rule == "topk"

    explained = tmp_path / "explained"
    assert main(["explain", "skeleton", "--checkpoint", str(two), "--count", "3", "--out", str(explained)]) == 0
    maps = np.load(explained / "maps.npy")
    assert maps.shape == (3, 16, 25) and maps.min() >= 0 and np.isclose(maps.reshape(3, -1).max(1), 1).all()
    test_set = camkit.lookup("datasets", "skeleton-synthetic")(split="test", size=24, frames=16)
    x = torch.stack([test_set[i]["input"] for i in range(3)])
    np.testing.assert_allclose(maps, camkit.explain(model, x, reduce="M").numpy(), atol=1e-6)
    for i in range(3):
        for kind in ("joint_time", "skeleton"):
            assert (explained / f"clip{i}_{kind}.png").stat().st_size > 5000
    summary = json.loads((explained / "summary.json").read_text())
    assert len(summary) == 3 and len(summary[0]["top joints"]) == 3

    evaluated = tmp_path / "eval"
    assert main(["eval", "skeleton", "--checkpoints", str(one), str(two), "--out", str(evaluated)]) == 0
    results = json.loads((evaluated / "results.json").read_text())
    assert list(results) == ["one (1 stream)", "two (2 streams)"]
    with torch.no_grad():
        clean = (model(torch.stack([test_set[i]["input"] for i in range(24)])).argmax(1)
                 == torch.as_tensor(test_set.labels)).float().mean().item()
    assert results["two (2 streams)"]["accuracy"] == pytest.approx(clean)
    for name in ("accuracy left arm", "accuracy class cue 1", "accuracy 5 random frames", "pointing game",
                 "energy share"):
        assert 0 <= results["one (1 stream)"][name] <= 1
    table = (evaluated / "results.md").read_text()
    assert "| pointing game |" in table and table.count("\n") == 2 + len(results["one (1 stream)"])
    assert (evaluated / "robustness.png").stat().st_size > 5000

    # checkpoints sharing a label are summarised as mean ± std; mask options can be overridden
    grouped = tmp_path / "grouped"
    assert main(["eval", "skeleton", "--checkpoints", str(two), str(two), "--label", "twice", "--label", "twice",
                 "-m", "absent_counts=false", "--out", str(grouped)]) == 0
    summary = json.loads((grouped / "results.json").read_text())["twice"]
    assert summary["checkpoints"] == 2 and summary["std"]["accuracy"] == 0
    assert "± 0.0" in (grouped / "results.md").read_text()


@pytest.mark.slow
def test_distributed_training_with_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU ranks even on a 1-GPU machine
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "camkit",
           "train", "skeleton", *DATA, "--streams", "2", "-m", "config=tiny", "--epochs", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("checkpoint written") == 1  # rank 0 only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]
    model, config = load_checkpoint(out)
    assert config["world_size"] == 2
    torch.manual_seed(0)  # the command seeds the same way before building the model
    fresh = camkit.lookup("models", "ragcn")(num_classes=8, **config["model_options"])
    trained = dict(model.named_parameters())
    changed = [name for name, p in fresh.named_parameters() if not torch.equal(p, trained[name])]
    assert len(changed) == len(trained)  # every parameter was updated by the optimiser


def test_unknown_dataset_lists_the_available(tmp_path):
    with pytest.raises(KeyError, match="skeleton-synthetic"):
        main(["train", "skeleton", "--dataset", "nope", "--out", str(tmp_path / "x")])


@pytest.mark.slow
def test_train_and_explain_an_stgcn_on_npy_files_with_the_openpose_graph(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        np.save(tmp_path / f"{split}_data.npy", rng.normal(size=(6, 3, 8, 18, 2)).astype(np.float32))
        (tmp_path / f"{split}_label.txt").write_text("\n".join(str(i % 3) for i in range(6)))
    out = tmp_path / "model"
    assert main(["train", "skeleton", "--dataset", "skeleton-npy", "-d", f"root={tmp_path}", "-d", "graph=openpose18",
                 "--model", "stgcn", "-m", "config=tiny", "--epochs", "1", "--out", str(out)]) == 0
    model, config = load_checkpoint(out)
    assert config["model_options"]["graph"] == "openpose18" and model.graph.num_joints == 18
    explained = tmp_path / "explained"
    assert main(["explain", "skeleton", "--checkpoint", str(out), "--split", "val", "--count", "2",
                 "--out", str(explained)]) == 0
    assert np.load(explained / "maps.npy").shape == (2, 8, 18)
    assert json.loads((explained / "summary.json").read_text())[0]["top joints"]
