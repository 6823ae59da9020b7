"""camkit eval image: accuracy against a hand-written loop, the test split after training, and the
WSSS / WSOL / PxAP protocols' data plumbing (maps from an explain run or computed, masks and boxes from
the data set, PNG files, VOC XML or JSON) against the accumulators fed by hand."""

import json

import numpy as np
import pytest
import torch

import camkit
from camkit.checkpoint import save_checkpoint
from camkit.cli import main
from camkit_plugins.image.dataset_inputs import dataset_inputs
from camkit_plugins.image.masks import read_mask, voc_palette, write_mask
from camkit_plugins.image.protocols_run import GroundTruth, ProtocolSettings, read_voc_boxes, run_protocols
from camkit_plugins.metrics.protocols import BoxAccuracy, PixelAveragePrecision, SegmentationSeeds

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")

SHAPES = list(camkit.lookup("datasets", "shapes")("test", count=1, size=8).classes)
CONFIG = {"model": "mnist-gap", "model_options": {"in_channels": 3}, "classes": SHAPES, "domain": "image",
          "input_size": 16, "in_channels": 3, "mean": [0.5] * 3, "std": [0.25] * 3}


def _model():
    torch.manual_seed(3)
    return camkit.lookup("models", "mnist-gap")(num_classes=len(SHAPES), in_channels=3).eval()


def test_accuracy_matches_a_hand_written_loop(tmp_path, capsys):
    from camkit_plugins.image.datasets import prepare_image
    from camkit_plugins.image.evaluate import evaluate_accuracy_on, evaluation_files

    model = _model()
    inputs = dataset_inputs("shapes", "test", count=23, size=16)
    report = evaluate_accuracy_on(model, CONFIG, inputs, batch_size=5, workers=0, progress=False)
    confusion, top5 = np.zeros((5, 5), dtype=np.int64), 0
    with torch.no_grad():
        for picture, label in zip(inputs.pictures, inputs.label_indices(SHAPES)):
            logits = model(prepare_image(picture, 16, [0.5] * 3, [0.5 * 0 + 0.25] * 3)[None])[0]
            confusion[label, int(logits.argmax())] += 1
            top5 += label in logits.argsort(descending=True)[:5].tolist()
    assert np.array_equal(report.confusion, confusion) and report.top5_correct == top5 == 23
    assert report.top1 == np.trace(confusion) / 23
    assert report.per_class() == {name: confusion[i, i] / confusion[i].sum() for i, name in enumerate(SHAPES)}
    written = evaluation_files(tmp_path / "eval", report)
    assert [p.name for p in written] == ["accuracy.json", "accuracy.md", "confusion.png"]
    assert json.loads(written[0].read_text())["confusion"] == confusion.tolist()

    save_checkpoint(tmp_path / "run", model, CONFIG)
    assert main(["eval", "image", "--checkpoint", str(tmp_path / "run"), "--dataset", "shapes", "--workers", "0",
                 "--no-progress"]) == 0
    assert "top-1" in capsys.readouterr().out
    unlabelled = tmp_path / "photos"
    unlabelled.mkdir()
    (unlabelled / "x.png").write_bytes((tmp_path / "eval" / "confusion.png").read_bytes())
    with pytest.raises(ValueError, match="labels are unknown"):
        main(["eval", "image", "--checkpoint", str(tmp_path / "run"), str(unlabelled), "--workers", "0"])


def test_train_defaults_follow_the_data_and_print_the_test_split(tmp_path, capsys):
    from camkit.checkpoint import load_checkpoint
    from camkit_plugins.image.commands import default_arch
    from camkit_plugins.image.train import evaluate_accuracy

    assert default_arch("mnist:~/mnist") == "mnist-gap-bn" and default_arch("digits") == "mnist-gap-bn"
    assert default_arch("shapes") == "resnet18" and default_arch("~/pets") == "resnet18"
    from camkit_plugins.image.datasets import MNIST_FILES, write_idx

    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("test", 20)):  # bright squares whose place is the class: learnable
        labels = np.arange(count) % 4
        images = rng.integers(0, 40, (count, 28, 28))
        for image, label in zip(images, labels):
            image[4 + 5 * label:10 + 5 * label, 8:20] = 250
        write_idx(tmp_path / "mnist" / MNIST_FILES[split][0], images)
        write_idx(tmp_path / "mnist" / MNIST_FILES[split][1], labels)
    assert main(["train", "image", "--data", f"mnist:{tmp_path / 'mnist'}", "--epochs", "1", "--val-fraction", "0",
                 "--batch-size", "8", "--out", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    model, config = load_checkpoint(tmp_path / "run")
    assert config["model"] == "mnist-gap-bn" and "no val split" in printed and "nan" not in printed
    test_set = camkit.lookup("datasets", "mnist")("test", root=tmp_path / "mnist")
    expected = evaluate_accuracy(model, test_set)  # the t10k files, through the training code's own loop
    assert f"test accuracy {100 * expected:.2f}% (20 images of the test split)" in printed
    assert config["test_accuracy"] == pytest.approx(expected)


def _hand_fed(maps, inputs, protocols):
    """The accumulators fed by hand with (N, H, W) maps of each image's label and the data set's truth."""
    labels = inputs.label_indices(SHAPES)
    seeds, boxes, pixels = SegmentationSeeds(num_classes=6), BoxAccuracy(), PixelAveragePrecision()
    truth = [np.where(mask.numpy(), label + 1, 0) for mask, label in zip(inputs.masks, labels)]
    seeds.add([m[None] for m in maps], [[label + 1] for label in labels], truth)
    boxes.add(maps, inputs.boxes.numpy())
    pixels.add(maps, inputs.masks.numpy())
    return {"wsss": seeds.result(), "wsol": boxes.result(), "pxap": pixels.result()}


def test_protocols_from_saved_maps_equal_the_accumulators_fed_by_hand(tmp_path):
    from camkit_plugins.image.explain_files import explain_files

    model = _model()
    inputs = dataset_inputs("shapes", "test", count=6, size=16)
    explain_files(model, CONFIG, inputs, tmp_path / "cams", workers=0, save_maps=True, overlays=False,
                  targets="label", progress=False)
    saved = np.stack([np.load(tmp_path / "cams" / f"{stem}_maps.npy")[0] for stem in inputs.stems])
    results = run_protocols(model, CONFIG, inputs, GroundTruth(inputs, SHAPES),
                            ProtocolSettings(["wsss", "wsol", "pxap"], maps=tmp_path / "cams"), batch_size=4,
                            workers=0, progress=False)
    expected = _hand_fed(saved, inputs, None)
    assert results["wsss"]["miou"] == pytest.approx(expected["wsss"]["miou"])
    np.testing.assert_allclose(results["wsss"]["iou_per_class"], expected["wsss"]["iou_per_class"])
    assert results["wsol"]["max_box_acc_v2"] == pytest.approx(expected["wsol"]["max_box_acc_v2"])
    assert results["pxap"]["pxap"] == pytest.approx(expected["pxap"]["pxap"])
    computed = run_protocols(model, CONFIG, inputs, GroundTruth(inputs, SHAPES), ProtocolSettings(["wsss"]),
                             batch_size=4, workers=0, progress=False)  # on the fly: the same maps
    assert computed["wsss"]["miou"] == pytest.approx(expected["wsss"]["miou"])

    centre = run_protocols(model, CONFIG, inputs, GroundTruth(inputs, SHAPES),
                           ProtocolSettings(["wsss"], baseline="center"), workers=0, progress=False)
    from camkit_plugins.metrics.baselines import center_maps

    assert centre["wsss"]["miou"] == pytest.approx(_hand_fed(center_maps((6, 16, 16), "NHW").numpy(), inputs,
                                                             None)["wsss"]["miou"])

    import dataclasses

    relabelled = dataclasses.replace(inputs, labels=[SHAPES[(SHAPES.index(label) + 1) % 5] for label in inputs.labels])
    with pytest.raises(ValueError, match="rerun camkit explain with --targets label"):  # maps of other classes
        run_protocols(model, CONFIG, relabelled, GroundTruth(relabelled, SHAPES),
                      ProtocolSettings(["wsol"], maps=tmp_path / "cams"), workers=0, progress=False)
    more = dataset_inputs("shapes", "val", count=3, size=16)
    with pytest.raises(ValueError, match="does not match the data set: 3 of 3"):
        run_protocols(model, CONFIG, more, GroundTruth(more, SHAPES),
                      ProtocolSettings(["wsss"], maps=tmp_path / "cams"), workers=0, progress=False)


def test_mask_files_voc_xml_and_json_boxes(tmp_path):
    assert voc_palette()[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert voc_palette()[15 * 3:16 * 3] == [192, 128, 128] and voc_palette()[255 * 3:] == [224, 224, 192]
    mask = np.array([[0, 1, 255], [2, 2, 0]])
    write_mask(tmp_path / "m.png", mask)
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)

    (tmp_path / "a.xml").write_text("<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>2</ymin>"
                                    "<xmax>10</xmax><ymax>20</ymax></bndbox></object><object><bndbox><xmin>5</xmin>"
                                    "<ymin>5</ymin><xmax>6</xmax><ymax>7</ymax></bndbox></object></annotation>")
    assert read_voc_boxes(tmp_path / "a.xml").tolist() == [[0, 1, 10, 20], [4, 4, 6, 7]]  # 1-based inclusive -> 0-based

    from camkit_plugins.image.dataset_inputs import ImageInputs

    pictures = [tmp_path / "a.png", tmp_path / "b.png"]
    inputs = ImageInputs([str(p) for p in pictures], list(pictures), ["a", "b"], ["circle", "square"])
    (tmp_path / "boxes.json").write_text(json.dumps({"a": [[0, 0, 4, 4]], "b.png": [[1, 1, 3, 3], [0, 0, 2, 2]]}))
    truth = GroundTruth(inputs, SHAPES, boxes=tmp_path / "boxes.json")
    assert truth.box_list(0).tolist() == [[0, 0, 4, 4]] and truth.box_list(1).shape == (2, 4)
    masks = tmp_path / "masks"
    masks.mkdir()
    write_mask(masks / "a.png", np.zeros((4, 6), np.uint8))
    truth = GroundTruth(inputs, SHAPES, masks=masks)
    assert truth.mask(0, (4, 6)).shape == (4, 6)
    with pytest.raises(ValueError, match="a.png: its mask is 6x4 but the image is 5x4"):
        truth.mask(0, (4, 5))
    with pytest.raises(FileNotFoundError, match="no ground-truth mask for"):
        truth.mask(1, (4, 6))
    write_mask(masks / "b.png", np.array([[0, 3, 255], [5, 3, 0]]))
    unlabelled = ImageInputs(inputs.names, inputs.files, inputs.stems, [None, None])
    assert GroundTruth(unlabelled, SHAPES, masks=masks).class_ids(1, read_mask(masks / "b.png")) == [2, 4]
