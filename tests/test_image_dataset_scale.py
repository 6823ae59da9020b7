"""camkit explain over whole data sets: inputs (folder trees, class folders, mnist:DIR, registered data
sets, list files), torchrun shards byte-identical to one process, resuming after a real kill, and the
outputs at scale (map dumps, float16, VOC-palette pseudo-masks, multi-scale + flip, manifests)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import write_png

import camkit
from camkit.checkpoint import save_checkpoint
from camkit.cli import main
from camkit_plugins.image.dataset_inputs import dataset_inputs, resolve_inputs
from camkit_plugins.image.explain_files import explain_files, rank_positions

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # untrained nets: some flat maps

CLASSES = ["a", "b"]
CONFIG = {"model": "mnist-gap", "model_options": {"in_channels": 3}, "classes": CLASSES, "domain": "image",
          "input_size": 12, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}


def _model():
    torch.manual_seed(0)
    return camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3).eval()


def _pictures(folder, names, size=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    paths = []
    for name in names:
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(torch.randint(0, 255, (3, size, size + 2), dtype=torch.uint8, generator=generator), str(path))
        paths.append(path)
    return paths


def _tree(folder):
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- inputs


def test_folder_trees_class_folders_list_files_and_registered_sets(tmp_path):
    _pictures(tmp_path / "classes", ["a/x.png", "a/deep/y.png", "b/z.png", "b/.hidden.png"])
    found = resolve_inputs([str(tmp_path / "classes")], CLASSES)
    assert [Path(n).name for n in found.names] == ["y.png", "x.png", "z.png"]  # recursive, sorted, hidden skipped
    assert found.labels == ["a", "a", "b"] and found.label_indices(CLASSES) == [0, 0, 1]
    # the same tree for a model whose classes are not the folders: unlabelled, and --targets label says why
    other = resolve_inputs([str(tmp_path / "classes")], ["cat", "dog"])
    assert other.labels == [None] * 3
    with pytest.raises(ValueError, match="labels are unknown for 3 image"):
        other.label_indices(["cat", "dog"])

    _pictures(tmp_path / "loose", ["p.png", "q/p.png"])
    listing = tmp_path / "lists" / "files.txt"
    listing.parent.mkdir()
    listing.write_text(f"# two pictures\n../loose/p.png\n\n{tmp_path / 'loose' / 'q' / 'p.png'}\n")
    listed = resolve_inputs([str(listing)])
    assert listed.files == [listing.parent / "../loose/p.png", tmp_path / "loose" / "q" / "p.png"]
    assert listed.stems == ["p", "p_2"]  # unique over the whole list, decided before any shard
    listing.write_text("../loose/p.png\nmissing.png\n")
    with pytest.raises(FileNotFoundError, match="files.txt:2: missing.png"):
        resolve_inputs([str(listing)])

    shapes = dataset_inputs("shapes", "test", count=6, size=16)
    data = camkit.lookup("datasets", "shapes")("test", count=6, size=16)
    assert shapes.names[0] == "shapes/test/0" and shapes.pictures.shape == (6, 3, 16, 16)
    assert shapes.labels == [data.classes[int(data[i]["label"])] for i in range(6)]
    assert torch.equal(shapes.masks, data.masks) and torch.equal(shapes.boxes, data.boxes)
    assert (shapes.pictures.float() / 255 - (data.images * 0.25 + 0.5)).abs().max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="not classes of the model"):
        shapes.label_indices(["circle", "square"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no pictures"):
        resolve_inputs([str(empty)])


def test_mnist_folder_means_its_test_split(tmp_path):
    from camkit_plugins.image.datasets import MNIST_FILES, write_idx

    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("test", 3)):
        images_name, labels_name = MNIST_FILES[split]
        write_idx(tmp_path / images_name, rng.integers(0, 255, (count, 28, 28)))
        write_idx(tmp_path / labels_name, np.arange(count) % 10)
    found = resolve_inputs([f"mnist:{tmp_path}"])
    t10k = camkit.lookup("datasets", "mnist")("test", root=tmp_path)
    assert len(found) == 3 and found.labels == ["0", "1", "2"]
    grey = (t10k.images[:, 0] * 0.5 + 0.5) * 255
    assert torch.equal(found.pictures[:, 0], grey.round().to(torch.uint8))
    assert torch.equal(found.pictures[:, 1], found.pictures[:, 0])  # grey repeated for the overlays


def test_rank_positions_cut_batches_the_same_way_for_any_world():
    assert rank_positions(10, 3, 0, 1) == list(range(10))
    assert rank_positions(10, 3, 0, 2) == [0, 1, 2, 6, 7, 8] and rank_positions(10, 3, 1, 2) == [3, 4, 5, 9]
    shards = [rank_positions(11, 2, rank, 4) for rank in range(4)]
    assert sorted(p for shard in shards for p in shard) == list(range(11))
    assert rank_positions(3, 4, 1, 2) == []  # more ranks than batches: an idle rank, not an error


# ---------------------------------------------------------------- outputs


def test_map_dumps_float16_masks_and_the_csv_manifest(tmp_path):
    torch.manual_seed(0)
    inputs = dataset_inputs("shapes", "test", count=5, size=12)
    classes = list(camkit.lookup("datasets", "shapes")("test", count=1, size=12).classes)
    model = camkit.lookup("models", "mnist-gap")(num_classes=5, in_channels=3).eval()
    config = {**CONFIG, "classes": classes, "mean": [0.5] * 3, "std": [0.25] * 3}
    options = {"workers": 0, "save_maps": True, "overlays": False, "progress": False}
    explain_files(model, config, inputs, tmp_path / "masks", save_masks=True, background=0.3, manifest="csv",
                  **options)
    explain_files(model, config, inputs, tmp_path / "f16", map_dtype="float16", targets="label", **options)
    predicted = explain_files(model, config, inputs, tmp_path / "predicted", **options)
    assert not list((tmp_path / "masks").glob("*.jpg")) and not (tmp_path / "masks" / "index.html").exists()
    labels = inputs.label_indices(classes)
    rows = list(csv.DictReader((tmp_path / "masks" / "manifest.csv").open()))
    assert [row["file"] for row in rows] == inputs.names and [row["label"] for row in rows] == inputs.labels
    for i, row in enumerate(rows):
        assert row["target"] == classes[labels[i]]  # --save-masks on a labelled set explains the labels
        maps = np.load(tmp_path / "masks" / row["map"])
        assert maps.dtype == np.float32 and maps.shape == (1, 12, 12)
        assert np.array_equal(np.load(tmp_path / "f16" / row["map"]), maps.astype(np.float16))
        mask = Image.open(tmp_path / "masks" / row["mask"])
        assert mask.mode == "P" and mask.getpalette()[3:6] == [128, 0, 0]  # VOC's colour for class 1
        # by hand: the label's map (its maximum is 1 after camkit's normalisation) above 0.3 is 1 + label
        assert np.array_equal(np.array(mask), np.where(maps[0] > 0.3, labels[i] + 1, 0))
    written = [json.loads(line) for line in (tmp_path / "predicted" / "manifest.jsonl").read_text().splitlines()]
    assert written == predicted.records
    for row in written:  # without masks, the prediction is explained
        assert row["target"] == row["predicted"] and abs(row["probability"] - row["scores"][0]) < 1e-7


def test_multi_scale_and_flip_are_the_augment_option(tmp_path):
    model = _model()
    files = _pictures(tmp_path / "in", [f"p{i}.png" for i in range(3)])
    report = explain_files(model, CONFIG, files, tmp_path / "out", workers=0, save_maps=True, overlays=False,
                           scales=(1, 0.5, 1.5), flip=True, progress=False)
    from camkit_plugins.image.datasets import decode_image_file, prepare_image

    batch = torch.stack([prepare_image(decode_image_file(f), 12, [0.5] * 3, [0.5] * 3) for f in files])
    expected = camkit.explain(model, batch, "cam", augment={"flips": "W", "scales": [0.5, 1.5],
                                                            "convention": "irn"}).maps
    for i, record in enumerate(report.records):
        torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "out" / record["map"]))[0], expected[i])
    with pytest.raises(ValueError, match="other settings: flip False"):
        explain_files(model, CONFIG, files, tmp_path / "out", workers=0, save_maps=True, overlays=False,
                      scales=(1, 0.5, 1.5), progress=False)


# ---------------------------------------------------------------- torchrun: two processes == one


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank, world, port, files, out, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from camkit.distributed import Distributed
    from camkit_plugins.image.evaluate import evaluate_accuracy_on
    from camkit_plugins.image.protocols_run import GroundTruth, ProtocolSettings, run_protocols

    job = Distributed.from_environment("cpu")  # one process group for the three sharded steps, as the CLI does
    model = _model()
    inputs = resolve_inputs(files, CLASSES)
    explain_files(model, CONFIG, inputs, out, workers=0, batch_size=2, save_maps=True, topk=2, progress=False,
                  distributed=job)
    accuracy = evaluate_accuracy_on(model, CONFIG, inputs, batch_size=2, workers=0, progress=False, distributed=job)
    shapes = dataset_inputs("shapes", "test", count=5, size=12)
    config = {**CONFIG, "classes": list(camkit.lookup("datasets", "shapes")("test", count=1).classes)}
    torch.manual_seed(1)
    shapes_model = camkit.lookup("models", "mnist-gap")(num_classes=5, in_channels=3).eval()
    protocols = run_protocols(shapes_model, config, shapes, GroundTruth(shapes, config["classes"]),
                              ProtocolSettings(["wsss", "wsol", "pxap"]), batch_size=2, workers=0, progress=False,
                              distributed=job)
    job.close()
    if rank == 0:
        Path(result_file).write_text(json.dumps({"confusion": accuracy.confusion.tolist(), "top5": accuracy.top5,
                                                 "miou": protocols["wsss"]["miou"],
                                                 "box": protocols["wsol"]["max_box_acc_v2"],
                                                 "pxap": protocols["pxap"]["pxap"]}))


@pytest.mark.slow
def test_two_processes_write_the_files_of_one(tmp_path, monkeypatch):
    """gloo on the CPU, two processes started by torch.multiprocessing as torchrun would: every file
    (overlays, maps, raw maps, top-2 panels, grid, page, manifest, journal) byte-identical to one
    process's, and the accuracy and protocol numbers equal."""
    import torch.multiprocessing as mp

    files = [str(p) for p in _pictures(tmp_path / "in", [f"{c}/p{i}.png" for c in CLASSES for i in range(4)])]
    files.append(str(tmp_path / "in" / "a" / "broken.png"))
    Path(files[-1]).write_bytes(b"not a picture")
    arguments = (_free_port(), [str(tmp_path / "in")])
    with monkeypatch.context() as patched:  # one process: here, its settings restored after
        for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "OMP_NUM_THREADS"):
            patched.setenv(name, "0")
        threads = torch.get_num_threads()
        _worker(0, 1, *arguments, str(tmp_path / "w1"), str(tmp_path / "w1.json"))
        torch.set_num_threads(threads)
    mp.start_processes(_worker, args=(2, *arguments, str(tmp_path / "w2"), str(tmp_path / "w2.json")), nprocs=2,
                       join=True, start_method="spawn")
    one, two = _tree(tmp_path / "w1"), _tree(tmp_path / "w2")
    assert len(one) == 8 * 4 + 5 and one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []
    assert json.loads((tmp_path / "w1.json").read_text()) == json.loads((tmp_path / "w2.json").read_text())
    manifest = [json.loads(line) for line in (tmp_path / "w2" / "manifest.jsonl").read_text().splitlines()]
    assert [Path(row["file"]).name for row in manifest] == [f"p{i}.png" for i in range(4)] * 2
    assert [row["label"] for row in manifest] == ["a"] * 4 + ["b"] * 4


# ---------------------------------------------------------------- resuming after a real kill


@pytest.mark.slow
def test_a_killed_run_loses_nothing_and_a_rerun_finishes_it(tmp_path):
    save_checkpoint(tmp_path / "run", _model(), CONFIG)
    files = _pictures(tmp_path / "in", [f"p{i:03d}.png" for i in range(48)])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "camkit", "explain", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "in"),
               "--out", str(out), "--method", "scorecam", "--batch-size", "2", "--workers", "0", "--save-maps",
               "--no-progress"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = out / ".explain-journal" / "rank-0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not journal.is_file() or journal.read_text().count("\n") < 6):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    journaled = [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    assert 6 <= len(journaled) < len(files), "the run was not killed mid-way"
    for record in journaled:  # everything journaled is whole: the overlay decodes, the maps load
        assert np.load(out / record["map"]).shape == (1, 12, 12)
        assert Image.open(out / record["overlay"]).size == (14, 12)
    assert not (out / "manifest.jsonl").exists()

    assert main(["explain", "--checkpoint", str(tmp_path / "run"), str(tmp_path / "in"), "--out", str(out),
                 "--method", "scorecam", "--batch-size", "2", "--workers", "0", "--save-maps", "--no-progress",
                 "--resume"]) == 0
    assert not list(out.glob(".*.tmp*"))  # what the kill left half-written is gone
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [Path(row["file"]).name for row in manifest] == [f.name for f in files]
    fresh = explain_files(_model(), CONFIG, files, tmp_path / "fresh", method="scorecam", batch_size=2, workers=0,
                          save_maps=True, progress=False)
    for row, reference in zip(manifest, fresh.records):
        assert row["overlay"] == reference["overlay"]
        np.testing.assert_allclose(np.load(out / row["map"]), np.load(tmp_path / "fresh" / reference["map"]),
                                   atol=1e-5)
    again = explain_files(_model(), CONFIG, files, out, method="scorecam", batch_size=2, workers=0, save_maps=True,
                          progress=False)
    assert again.skipped == len(files) and again.explained == 0 and len(again.records) == len(files)
