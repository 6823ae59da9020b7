"""``camkit explain --model SPEC``: module:callable, file.py:callable, torchvision names (random weights,
and real weight loading from a cache this test writes), Hugging Face folders, TorchScript; bad specs."""

import numpy as np
import pytest
import torch
from torchvision.io import write_png

from camkit.cli import main
from camkit_plugins.image.model_spec import ModelSpecError, load_model_spec

TINY_MODEL = '''
import torch.nn as nn

def build():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))

def not_a_model():
    return 42
'''


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        write_png(torch.from_numpy(rng.integers(0, 255, (3, 20, 24), dtype=np.uint8)), str(folder / f"p{i}.png"))
    return folder


@pytest.fixture
def tiny_file(tmp_path):
    path = tmp_path / "tiny_zoo.py"
    path.write_text(TINY_MODEL)
    return path


def test_file_and_module_callables_through_the_cli(tmp_path, pictures, tiny_file, monkeypatch):
    labels = tmp_path / "labels.txt"
    labels.write_text("apple\nbanana\ncherry\n")
    out = tmp_path / "out"
    code = main(["explain", "--model", f"{tiny_file}:build", str(pictures), "--out", str(out), "--labels", str(labels),
                 "--size", "32", "--workers", "0", "--method", "gradcam"])
    assert code == 0
    overlays = sorted(p.name for p in out.glob("p*_pred_*.jpg"))
    assert len(overlays) == 2 and all(name.split("_pred_")[1][:-4].rsplit("_", 1)[0] in {"apple", "banana", "cherry"}
                                      for name in overlays)
    monkeypatch.syspath_prepend(str(tmp_path))
    model, config = load_model_spec("tiny_zoo:build", labels=str(labels), mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    assert config["classes"] == ["apple", "banana", "cherry"] and config["input_size"] == 224
    assert config["mean"] == [0.5, 0.5, 0.5] and not model.training


def test_torchvision_names_with_random_weights(pictures, tmp_path):
    model, config = load_model_spec("torchvision:squeezenet1_1", weights="none", labels="imagenet")
    assert config["classes"][:2] == ["tench", "goldfish"] and len(config["classes"]) == 1000
    code = main(["explain", "--model", "torchvision:resnet18", "--weights", "none", str(pictures),
                 "--out", str(tmp_path / "out"), "--size", "64", "--workers", "0", "--topk", "2"])
    assert code == 0 and len(list((tmp_path / "out").glob("*_top2.png"))) == 2


def test_torchvision_weights_load_from_the_local_cache_only(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ModelSpecError,
                       match=r"not in the local torch cache.*squeezenet1_1-b8a52dc0.pth.*--weights none"):
        load_model_spec("torchvision:squeezenet1_1")
    torch.manual_seed(3)
    written = torchvision.models.squeezenet1_1().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(written, tmp_path / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth")
    model, config = load_model_spec("torchvision:squeezenet1_1")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, written[name]), name
    assert config["input_size"] == 224 and config["classes"][0] == "tench"
    assert config["mean"] == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(ModelSpecError, match="unknown weights 'BEST'.*IMAGENET1K_V1"):
        load_model_spec("torchvision:squeezenet1_1", weights="BEST")
    assert not list((tmp_path / "hub" / "checkpoints").glob("*.partial"))  # nothing was downloaded


def test_hugging_face_folder_with_its_own_labels_and_preprocessing(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1],
                                       num_labels=2, id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    folder = tmp_path / "hf-model"
    transformers.ResNetForImageClassification(config).save_pretrained(folder)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 96}, image_mean=[0.5] * 3,
                                        image_std=[0.25] * 3).save_pretrained(folder)
    model, found = load_model_spec(f"hf:{folder}")
    assert found["classes"] == ["cat", "dog"] and found["input_size"] == 96 and found["std"] == [0.25] * 3
    with pytest.raises(ModelSpecError, match="not found locally.*never downloads"):
        load_model_spec(f"hf:{tmp_path / 'missing'}")


def test_torch_export_archive_and_torchscript(tmp_path, tiny_file, pictures, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    from tiny_zoo import build

    eager = build().eval()
    exported = tmp_path / "tiny.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(eager, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},)),
                      str(exported))
    model, config = load_model_spec(str(exported), size=32)
    assert len(config["classes"]) == 3
    x = torch.randn(2, 3, 32, 32)
    for method in ("cam", "gradcam"):
        import camkit

        torch.testing.assert_close(camkit.explain(model, x, method).maps, camkit.explain(eager, x, method).maps)
    code = main(["explain", "--model", str(exported), str(pictures), "--out", str(tmp_path / "out"), "--size", "32",
                 "--workers", "0"])
    assert code == 0 and len(list((tmp_path / "out").glob("*_pred_*.jpg"))) == 2
    scripted = tmp_path / "tiny.ts"
    torch.jit.script(eager).save(str(scripted))
    with pytest.raises(ValueError, match="TorchScript module, which camkit cannot explain.*torch.export"):
        main(["explain", "--model", str(scripted), str(pictures), "--out", str(tmp_path / "o2"), "--workers", "0"])


@pytest.mark.parametrize("spec, message", [
    ("no_such_package_xyz:build", "cannot import 'no_such_package_xyz'"),
    ("{file}:missing", "has no callable 'missing'"),
    ("{file}:not_a_model", "gave a int, not a torch.nn.Module"),
    ("torchvision:resnet_nope", "torchvision has no model 'resnet_nope'"),
    ("resnet18", "use torchvision:NAME, timm:NAME, hf:NAME_OR_PATH"),
    ("{dir}/missing.py:build", "no such file"),
])
def test_bad_model_specs_are_clear_errors(spec, message, tiny_file, tmp_path):
    with pytest.raises(ModelSpecError, match=message):
        load_model_spec(spec.format(file=tiny_file, dir=tmp_path), weights="none")


def test_labels_of_the_wrong_length_and_checkpoint_options(tmp_path, tiny_file, pictures, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(ModelSpecError, match="has 2 class names but the model outputs 3 classes"):
        load_model_spec(f"{tiny_file}:build", labels=str(labels))
    with pytest.raises(ValueError, match="--labels: only with --model"):
        main(["explain", "--checkpoint", str(tmp_path), str(pictures), "--out", str(tmp_path / "o"),
              "--labels", "imagenet"])


def test_method_options_from_the_command_line(tmp_path, pictures, tiny_file, monkeypatch):
    import camkit
    from camkit_plugins.image.commands import parse_method_options

    assert parse_method_options(["chunk_size=2", "scales=[1, 0.5]", "mode=fast"]) == {
        "chunk_size": 2, "scales": [1, 0.5], "mode": "fast"}
    with pytest.raises(ValueError, match="write NAME=VALUE"):
        parse_method_options(["chunk_size"])
    seen = []
    original = camkit.Explainer.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("method_options"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(camkit.Explainer, "__init__", spy)
    out = tmp_path / "out"
    code = main(["explain", "--model", f"{tiny_file}:build", str(pictures), "--out", str(out), "--size", "16",
                 "--workers", "0", "--method", "scorecam", "--method-option", "chunk_size=2", "--save-maps"])
    assert code == 0 and {"chunk_size": 2} in seen
    monkeypatch.setattr(camkit.Explainer, "__init__", original)
    maps = np.load(next(out.glob("p0_maps.npy")))
    assert maps.shape == (1, 16, 16) and float(maps.max()) > 0  # Score-CAM's maps, chunked by 2
    with pytest.raises(ValueError, match="unknown scorecam option 'chunk_sise'. Did you mean 'chunk_size'"):
        main(["explain", "--model", f"{tiny_file}:build", str(pictures), "--out", str(tmp_path / "o2"),
              "--workers", "0", "--method", "scorecam", "--method-option", "chunk_sise=2"])
