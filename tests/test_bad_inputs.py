"""Every bad input a clear error, for every command of the CLI.

Each case is a command line. Called through ``main`` it raises the expected type with a message that
names the problem; called as the ``camkit`` console command it prints exactly one ``camkit: error: ...``
line, no traceback, and exits with status 2. Usage mistakes (an unknown flag, a value outside the
choices) are argparse's: usage, the error and status 2."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

import camkit
from camkit.checkpoint import save_checkpoint
from camkit.cli import commands, main, run
from camkit.plugin_manager import UnknownNameError
from camkit.validation import NonFiniteError
from camkit_plugins.image.model_spec import ModelSpecError

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")


@dataclass(frozen=True)
class Case:
    command: str  # placeholders {name} are the world's paths
    error: type[BaseException]
    match: str  # a regular expression searched in the message
    needs: str = ""  # "no-cuda", "one-gpu" or "read-only": the machine the case simulates


EXPLAIN = "explain --workers 0 --out {out}"
BENCH = ("bench --models mnist-gap --datasets digits --methods cam --metrics pointing_game --samples 4 "
         "--quiet --no-plots")

CASES = [
    # --- plugins, list
    Case("plugins --jsn", SystemExit, "2"),
    Case("list banana", KeyError, r"unknown registry 'banana'\. Available: .*methods"),
    Case("list metods", UnknownNameError, r"unknown registry 'metods'\. Did you mean 'methods'"),
    # --- explain: devices (one parser for every --device)
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --device banana", ValueError,
         "device 'banana': not a device; use auto, cpu"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --device cuda:0x", ValueError, "device 'cuda:0x': not a device"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --device cuda", ValueError, "no CUDA device torch can use",
         needs="no-cuda"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --device cuda:3", ValueError, r"wants cuda:3 but the machine has 1",
         needs="one-gpu"),
    # --- explain: output folder
    Case("explain --workers 0 --checkpoint {ck} {pics} --out {afile}", NotADirectoryError, "is a file, not a folder"),
    Case("explain --workers 0 --checkpoint {ck} {pics} --out {afile}/sub", NotADirectoryError,
         "cannot create the folder, .*afile is a file"),
    Case("explain --workers 0 --checkpoint {ck} {pics} --no-grid --out {read_only}", PermissionError,
         "cannot write in this folder", needs="read-only"),
    # --- explain: checkpoints that do not fit
    Case(f"{EXPLAIN} --checkpoint {{classes3}} {{pics}}", ValueError,
         r"weights do not fit config.json \(model 'mnist-gap', 3 classes\): 2 of another shape \(classifier.weight"),
    Case(f"{EXPLAIN} --checkpoint {{otherarch}} {{pics}}", ValueError,
         r"weights do not fit config.json \(model 'resnet18', 2 classes\): .*missing \(conv1.weight"),
    Case(f"{EXPLAIN} --checkpoint {{nomodel}} {{pics}}", ValueError, 'not a camkit checkpoint config: no "model"'),
    Case(f"{EXPLAIN} --checkpoint {{noclasses}} {{pics}}", ValueError, '"classes" must be a non-empty list'),
    Case(f"{EXPLAIN} --checkpoint {{listconfig}} {{pics}}", ValueError,
         "a checkpoint config is a JSON object, not list"),
    Case(f"{EXPLAIN} --checkpoint {{badjson}} {{pics}}", ValueError, "unreadable checkpoint config"),
    Case(f"{EXPLAIN} --checkpoint {{unknownmodel}} {{pics}}", KeyError, "unknown model 'resnet-banana'"),
    Case(f"{EXPLAIN} --checkpoint {{badoptions}} {{pics}}", ValueError, "cannot be built with model_options"),
    Case(f"{EXPLAIN} --checkpoint {{noweights}} {{pics}}", ValueError, "model.pt: cannot load checkpoint weights"),
    Case(f"{EXPLAIN} --checkpoint {{garbageweights}} {{pics}}", ValueError, "model.pt: cannot load checkpoint weights"),
    Case(f"{EXPLAIN} --checkpoint {{nanweights}} {{pics}}", NonFiniteError,
         "weight 'classifier.bias' is not finite: 1 NaN"),
    Case(f"{EXPLAIN} --checkpoint {{skeletondomain}} {{pics}}", ValueError,
         "a skeleton checkpoint; camkit explain handles images"),
    Case(f"{EXPLAIN} --checkpoint {{nowhere}} {{pics}}", FileNotFoundError, "not a camkit checkpoint"),
    Case(f"{EXPLAIN} --checkpoint {{afile}} {{pics}}", FileNotFoundError, "afile: not a camkit checkpoint"),
    # --- explain: inputs and options
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{nowhere}}", FileNotFoundError, "no such file or directory"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{empty}}", ValueError, "no pictures"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --targets label", ValueError, "labels are unknown for 4 image"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --save-masks --background 2", ValueError,
         "--background 2.0: a threshold on maps in"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} --dataset shapes {{pics}}", ValueError,
         "give either --dataset or input files"),
    # --- eval image
    Case("eval image --workers 0 --no-progress --checkpoint {ck} {pics}", ValueError, "labels are unknown for 4 image"),
    Case("eval image --workers 0 --no-progress --checkpoint {ck} {pics} --protocol wssss", KeyError,
         "unknown protocol 'wssss'.*wsss"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --method gradkam", KeyError, "unknown method 'gradkam'.*gradcam"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --topk 3", ValueError, "topk=3 must be between 1 and the number"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --batch-size 0", ValueError, "batch_size should be a positive"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --alpha 1.5", ValueError, r"alpha=1.5 must be between 0 and 1"),
    Case(f"{EXPLAIN} --checkpoint {{ck}} {{pics}} --decode gpu", SystemExit, "2"),
    # --- explain --model: the user's own file, serialised models, preprocessing
    Case(f"{EXPLAIN} --model {{brokenpy}}:build {{pics}}", ModelSpecError,
         r"importing .*broken\.py failed: ModuleNotFoundError: No module named 'a_missing_dependency'"),
    Case(f"{EXPLAIN} --model {{raisingpy}}:build {{pics}}", ModelSpecError,
         r"calling build\(\) failed: RuntimeError: no weights here"),
    Case(f"{EXPLAIN} --model {{scripted}} {{pics}}", ModelSpecError,
         "is a TorchScript module.*no forward hooks.*torch.export archive"),
    Case(f"{EXPLAIN} --model {{tinypy}}:build {{pics}} --size 0", ModelSpecError,
         "--size 0: an input size is a positive"),
    Case(f"{EXPLAIN} --model {{tinypy}}:build {{pics}} --size -4", ModelSpecError, "--size -4: an input size"),
    Case(f"{EXPLAIN} --model {{tinypy}}:build {{pics}} --mean 0.5,0.5", ModelSpecError,
         r"--mean takes 3 values, one per input channel \(R,G,B\), got 2"),
    Case(f"{EXPLAIN} --model {{tinypy}}:build {{pics}} --std 0.2,0.2,0.2,0.2", ModelSpecError,
         "--std takes 3 values, one per input channel .*got 4"),
    Case(f"{EXPLAIN} --model {{tinypy}}:build {{pics}} --std 0.2,0,0.2", ModelSpecError,
         "--std 0.2,0,0.2: every std must be positive"),
    Case(f"{EXPLAIN} --model {{tinypy}}:build {{pics}} --mean 0.5,nan,0.5", ModelSpecError,
         "--mean 0.5,nan,0.5: values must be finite"),
    # --- train image
    Case("train image --data imagenet --out {out}", ValueError, "--data 'imagenet': not a directory"),
    Case("train image --data {pics} --arch mnist-gap --epochs 0 --out {out}", ValueError, "epochs must be >= 1"),
    Case("train image --data {pics} --arch resnet-banana --out {out}", KeyError, "unknown model 'resnet-banana'"),
    Case("train image --data {pics} --val-fraction 1.5 --out {out}", ValueError, "split fractions must leave"),
    Case("train image --data {one_class} --out {out}", ValueError, "only the class .*at least two"),
    Case("train image --data {pics} --out {afile}", NotADirectoryError, "is a file, not a folder"),
    Case("train image --data {pics} --size 0 --out {out}", ValueError, "--size 0: an input size is a positive"),
    Case("train image --data {pics} --arch mnist-gap --size 3 --out {out}", ValueError,
         "--arch mnist-gap cannot take 3x3x3 inputs .--size.: .*too small"),
    Case("train image --data {pics} --arch mnist-gap --lr nan --out {out}", ValueError, "Invalid learning rate: nan"),
    Case("train image --data mnist:{nowhere} --arch mnist-gap --out {out}", FileNotFoundError,
         "no train-images-idx3-ubyte"),
    Case("train image --data {pics}", ValueError, "needs --out .or --resume DIR."),
    Case("train image --resume {nowhere}", FileNotFoundError, "not a camkit checkpoint"),
    Case("train image --resume {ck}", ValueError, "does not record its training settings"),
    Case("train image --resume {run} --lr 0.5", ValueError,
         r"continues the same run, but lr 0.5 \(the run has 0.003\)"),
    Case("train image --resume {run}", ValueError, "already finished all 1 epoch"),
    Case("train image --resume {run} --epochs 3 --out {afile}", ValueError, "epochs 3 .the run has 1."),
    Case("train image --data {pics} --arch mnist-gap --out {run}", FileExistsError,
         r"run already holds a checkpoint \(config.json, model.pt, training.pt\).*--resume .*--overwrite"),
    # --- demo (the demo command writes through plugins/image/demo.py)
    Case("demo --quick --out {afile}", OSError, "afile"),
    # --- bench
    Case(f"{BENCH} --device banana --out {{out}}", ValueError, "device 'banana': not a device"),
    Case(f"{BENCH} --device cuda:0x --out {{out}}", ValueError, "device 'cuda:0x': not a device"),
    Case(f"{BENCH} --device cuda --out {{out}}", ValueError, "no CUDA device torch can use", needs="no-cuda"),
    Case(f"{BENCH} --out {{afile}}", NotADirectoryError, "is a file, not a folder"),
    Case(f"{BENCH} --out {{bench_empty_cell}}", ValueError, r"corrupt cached cell \(a JSON list, not a record\)"),
    Case(f"{BENCH} --out {{bench_cut_cell}}", ValueError, "corrupt cached cell"),
    Case(f"{BENCH} --out {{bench_hollow_cell}}", ValueError, r"corrupt cached cell \(missing or malformed values"),
    Case(f"{BENCH} --samples 0 --out {{out}}", ValueError, "'samples' must be a positive integer"),
    Case("bench --methods gradkam --models mnist-gap --datasets digits --out {out}", KeyError,
         "unknown method 'gradkam'"),
    Case("bench --methods gradcm --models mnist-gap --datasets digits --out {out}", UnknownNameError,
         r"unknown method 'gradcm'\. Did you mean 'gradcam'"),
    Case("bench --methods cam --models mnist-gapp --datasets digits --out {out}", UnknownNameError,
         r"unknown model 'mnist-gapp'\. Did you mean 'mnist-gap'.*, or a checkpoint directory \(with config.json\)$"),
    Case("bench --config {bench_typo_config}", UnknownNameError,
         r"unknown bench setting 'sample'\. Did you mean 'samples'\? Available: batch_size,"),
    Case("bench --config {nowhere}.toml", FileNotFoundError, "does not exist"),
    Case("bench --targets banana", SystemExit, "2"),
    # --- skeleton commands: what already is one clear error ...
    Case("train skeleton --dataset nope --out {out}", KeyError, "unknown dataset 'nope'"),
    Case("explain skeleton --checkpoint {nowhere} --out {out}", FileNotFoundError, "not a camkit checkpoint"),
    Case("eval skeleton --checkpoints {nowhere} --out {out}", FileNotFoundError, "not a camkit checkpoint"),
    Case("explain skeleton --checkpoint {nomodel} --out {out}", ValueError, 'no "model"'),
    # ... and what issue #13 found was not
    Case("train skeleton -d frames=abc --epochs 1 --out {out}", ValueError, "frames"),
    Case("train skeleton -d frames --out {out}", ValueError, "not KEY=VALUE"),
    Case("train skeleton -d sise=8 --out {out}", UnknownNameError,
         r"unknown dataset skeleton-synthetic option 'sise'\. Did you mean 'size'"),
    Case("train skeleton --epochs 0 --out {out}", ValueError, "epochs"),
    Case("explain skeleton --checkpoint {ck} --out {out}", ValueError, "image checkpoint|skeleton"),
    Case("eval skeleton --checkpoints {ck} {ck} --label a --out {out}", ValueError, "--label"),
    Case("ensemble skeleton --checkpoints {ck} --out {out}", ValueError, "skeleton"),
    Case("train skeleton --out {ck}", FileExistsError, r"ck already holds a checkpoint \(config.json, model.pt\)"),
    Case("ensemble skeleton --checkpoints {ck} --out {ck}", FileExistsError, "already holds a checkpoint"),
    # --- app (checked before anything is served)
    Case("app --checkpoint {nowhere}", FileNotFoundError, "not a camkit checkpoint"),
    Case("app --checkpoint {ck} --labels imagenet", ValueError, "--labels: only with --model"),
    Case("app --checkpoint {ck} --examples {nowhere}", ValueError, "--examples: no such file: .*nowhere"),
    Case("app --checkpoint {ck} --max-upload-mb 0", ValueError, "--max-upload-mb 0.0: a positive size"),
    Case("app --checkpoint {ck} --port 70000", ValueError, "--port 70000: a port is 1-65535 .leave it out"),
]


def _ids(case: object) -> str:
    case = getattr(case, "values", [case])[0]
    return case.command.split(" --")[0].replace(" ", "-") + ":" + case.match[:30]


# ---------------------------------------------------------------- the world the cases run in


def _pictures(folder: Path, names: list[str]) -> Path:
    folder.mkdir()
    for i, name in enumerate(names):
        image = torch.full((3, 24, 20), 40, dtype=torch.uint8)
        image[2 * (i % 2)] = 200
        write_png(image, str(folder / name))
    return folder


def _variant(source: Path, target: Path, config: dict | None = None, weights: bytes | None = None) -> str:
    shutil.copytree(source, target)
    if config is not None:
        (target / "config.json").write_text(json.dumps(config))
    if weights is not None:
        (target / "model.pt").write_bytes(weights)
    return str(target)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    paths = {"pics": str(_pictures(root / "pics", ["cat.0.png", "dog.0.png", "cat.1.png", "dog.1.png"])),
             "one_class": str(_pictures(root / "one-class", ["cat.0.png", "cat.1.png"])),
             "nowhere": str(root / "nowhere"), "out": str(root / "out")}
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no pictures here")
    (root / "afile").write_text("a file where a folder belongs")
    (root / "typo.toml").write_text('models = ["mnist-gap"]\ndatasets = ["digits"]\nsample = 4\n')
    paths["bench_typo_config"] = str(root / "typo.toml")
    paths.update(empty=str(root / "empty"), afile=str(root / "afile"))

    config = {"model": "mnist-gap", "model_options": {"in_channels": 3}, "classes": ["cat", "dog"],
              "domain": "image", "input_size": 16, "in_channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3)
    ck = save_checkpoint(root / "ck", model, config)
    paths["ck"] = str(ck)
    without = {key: value for key, value in config.items() if key != "model"}
    nan_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    nan_state["classifier.bias"][0] = float("nan")
    import io

    buffer = io.BytesIO()
    torch.save(nan_state, buffer)
    variants = {
        "classes3": {**config, "classes": ["cat", "cow", "dog"]},
        "otherarch": {**config, "model": "resnet18", "model_options": {}},
        "nomodel": without,
        "noclasses": {**config, "classes": []},
        "unknownmodel": {**config, "model": "resnet-banana"},
        "badoptions": {**config, "model_options": {"in_channels": 3, "depth": 7}},
        "skeletondomain": {**config, "domain": "skeleton"},
    }
    for name, changed in variants.items():
        paths[name] = _variant(ck, root / name, config=changed)
    paths["listconfig"] = _variant(ck, root / "listconfig")
    (root / "listconfig" / "config.json").write_text("[1, 2]")
    paths["badjson"] = _variant(ck, root / "badjson")
    (root / "badjson" / "config.json").write_text('{"model": "mnist-gap",')
    paths["noweights"] = _variant(ck, root / "noweights")
    (root / "noweights" / "model.pt").unlink()
    paths["garbageweights"] = _variant(ck, root / "garbageweights", weights=b"not a torch file")
    paths["nanweights"] = _variant(ck, root / "nanweights", weights=buffer.getvalue())

    (root / "broken.py").write_text("import a_missing_dependency\n")
    (root / "raising.py").write_text("def build():\n    raise RuntimeError('no weights here')\n")
    (root / "tiny.py").write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), "
                                  "nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))\n")
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript: users still have such files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(tiny).save(str(root / "scripted.pt"))
    paths.update(brokenpy=str(root / "broken.py"), raisingpy=str(root / "raising.py"), tinypy=str(root / "tiny.py"),
                 scripted=str(root / "scripted.pt"))

    run_dir = root / "run"
    assert main(["train", "image", "--data", paths["pics"], "--arch", "mnist-gap", "--epochs", "1", "--size", "16",
                 "--batch-size", "2", "--val-fraction", "0.25", "--out", str(run_dir)]) == 0
    paths["run"] = str(run_dir)

    bench = root / "bench"
    assert main([*shlex.split(BENCH), "--out", str(bench)]) == 0  # pointing_game on digits: skipped cells, no maps
    cells = sorted((bench / "cells").glob("*.json"))
    assert cells
    for name, text in (("bench_empty_cell", "[]"), ("bench_cut_cell", cells[0].read_text()[:20]),
                       ("bench_hollow_cell", json.dumps({**json.loads(cells[0].read_text()), "values": None}))):
        shutil.copytree(bench, root / name)
        (root / name / "cells" / cells[0].name).write_text(text)
        paths[name] = str(root / name)
    return paths


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder nobody can write in: chmod 555, and for root (who ignores modes) chattr +i."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if _writable(folder) and shutil.which("chattr"):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
    try:
        if _writable(folder):
            pytest.skip("cannot make a read-only folder here (root without chattr)")
        yield str(folder)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").write_text("")
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


def _simulate(needs: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, paths: dict) -> dict:
    if needs == "no-cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif needs == "one-gpu":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    elif needs == "read-only":
        paths = {**paths, "read_only": request.getfixturevalue("read_only_folder")}
    return paths


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bad_input_is_one_clear_error(case, world, request, monkeypatch, capsys, tmp_path):
    paths = _simulate(case.needs, request, monkeypatch, {**world, "out": str(tmp_path / "out")})
    argv = shlex.split(case.command.format(**paths))
    with pytest.raises(case.error) as caught:
        main(argv)
    if case.error is SystemExit:  # argparse: usage and the error, status 2
        assert caught.value.code == 2
        return
    message = caught.value.args[0] if isinstance(caught.value, KeyError) else str(caught.value)
    assert isinstance(message, str) and __import__("re").search(case.match, message), message
    capsys.readouterr()

    monkeypatch.setattr(sys, "argv", ["camkit", *argv])
    monkeypatch.delenv("CAMKIT_TRACEBACK", raising=False)
    assert run() == 2
    errors = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("camkit")]
    assert errors == [f"camkit: error: {message}"]
    assert "\n" not in message


def test_every_command_has_a_bad_input_case():
    covered = set()
    for case in CASES:
        case = getattr(case, "values", [case])[0]
        words = case.command.split()
        covered |= {path for path in commands() if words[:len(path.split())] == path.split()}
    assert covered == set(commands())


def test_traceback_on_request(world, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["camkit", "explain", "--checkpoint", world["nomodel"], world["pics"],
                                      "--out", world["out"]])
    monkeypatch.setenv("CAMKIT_TRACEBACK", "1")
    with pytest.raises(ValueError, match='no "model"'):
        run()
