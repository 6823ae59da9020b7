"""The image commands: ``camkit train image``, ``camkit explain``, ``camkit eval image`` and ``camkit demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EMBEDDED = ("digits", "shapes")


def resolve_data(spec: str, seed: int, size: int | None, val_fraction: float) -> tuple[Any, Any]:
    """``(train, val)`` datasets for ``--data``: ``digits``, ``shapes``, ``mnist:DIR`` or a folder."""
    from camkit.plugin_manager import lookup

    if size is not None and size < 1:
        raise ValueError(f"--size {size}: an input size is a positive number of pixels")
    if spec in EMBEDDED:
        options: dict[str, Any] = {} if size is None else {"size": size}
        build = lookup("datasets", spec)
        return build("train", seed=seed, **options), build("val", seed=seed, **options)
    if spec.startswith("mnist:"):
        build = lookup("datasets", "mnist")
        root = spec.split(":", 1)[1]
        return (build("train", seed=seed, root=root, val_fraction=val_fraction),
                build("val", seed=seed, root=root, val_fraction=val_fraction))
    if Path(spec).is_dir():
        build = lookup("datasets", "image-folder")
        options = {"root": spec, "val_fraction": val_fraction, **({} if size is None else {"size": size})}
        return build("train", seed=seed, **options), build("val", seed=seed, **options)
    raise ValueError(f"--data {spec!r}: not a directory; use a folder of pictures, mnist:DIR, or one of "
                     f"{', '.join(EMBEDDED)}")


def resolve_test_data(spec: str, seed: int, size: int | None) -> Any:
    """The test split of ``--data`` when it has one (MNIST's t10k files, the embedded sets' test split),
    else None (a folder of pictures is split into train and val only)."""
    from camkit.plugin_manager import lookup

    if spec in EMBEDDED:
        return lookup("datasets", spec)("test", seed=seed, **({} if size is None else {"size": size}))
    if spec.startswith("mnist:"):
        return lookup("datasets", "mnist")("test", seed=seed, root=spec.split(":", 1)[1])
    return None


SMALL_GREY_DATA = ("digits",)  # 28x28 grey digits: a ResNet-18 is the wrong tool


def default_arch(data: str) -> str:
    """The architecture ``--arch`` defaults to for ``data``: mnist-gap-bn for MNIST and the digits (98% on
    real digits in 8 epochs), resnet18 for pictures."""
    return "mnist-gap-bn" if data.startswith("mnist:") or data in SMALL_GREY_DATA else CLI_DEFAULTS["arch"]


def dataset_input_size(dataset: Any) -> int:
    if hasattr(dataset, "size"):
        return int(dataset.size)
    return int(dataset[0]["input"].shape[-1])


# The settings that decide what a training run computes: recorded in the checkpoint as "training", so
# --resume continues the same run (--workers and --out may change, they do not change the result).
RECIPE = ("data", "arch", "epochs", "seed", "size", "lr", "batch_size", "weights", "output_stride", "val_fraction",
          "flip")


def train_and_save(data: str, arch: str, out: str | Path, epochs: int, seed: int = 0, size: int | None = None,
                   lr: float = 3e-3, batch_size: int = 64, workers: int = 0, weights: str | None = None,
                   output_stride: int = 32, val_fraction: float = 0.2, flip: bool = False,
                   resume: str | Path | None = None, overwrite: bool = False) -> tuple[Any, dict[str, Any]]:
    """Train ``arch`` on ``data``, writing a checkpoint in ``out`` at the end of every epoch (atomically:
    weights, config and the training state for ``resume``); returns ``(model, config)``.

    ``resume``: a checkpoint directory of the same run (same settings) to continue from its last epoch;
    the result is the same as without the interruption. ``out`` holding another checkpoint is an error
    unless ``overwrite`` (or it is ``resume`` itself). Ctrl-C raises ``KeyboardInterrupt`` naming the
    last good checkpoint; a non-finite loss stops training with ``NonFiniteError`` before anything
    non-finite is written."""
    from camkit.checkpoint import check_free_for_training
    from camkit.io import output_folder
    from camkit_plugins.image.train import seed_everything

    recipe = {"data": data, "arch": arch, "epochs": epochs, "seed": seed, "size": size, "lr": lr,
              "batch_size": batch_size, "weights": weights, "output_stride": output_stride,
              "val_fraction": val_fraction, "flip": flip}
    check_free_for_training(out, resume, overwrite)
    state = _training_state_to_resume(resume, recipe, epochs)
    out = output_folder(out)
    train_set, val_set = resolve_data(data, seed, size, val_fraction)
    seed_everything(seed)
    model, config = _build_model_and_config(arch, train_set, recipe, weights, output_stride, resumed=state is not None)
    history = _train_with_checkpoints(model, config, train_set, val_set, out, state, resume, workers)
    if history["skipped"]:
        print(f"warning: {len(history['skipped'])} unreadable image(s) skipped: {', '.join(history['skipped'])}",
              file=sys.stderr)
    return model, config


def _training_state_to_resume(resume: str | Path | None, recipe: dict[str, Any], epochs: int) -> Any:
    """The training state of the ``resume`` checkpoint (None for a new run), checked to be the same run and
    unfinished."""
    from camkit.checkpoint import load_training_state

    if resume is None:
        return None
    check_same_run(resume, recipe)
    state = load_training_state(resume)
    if int(state["epoch"]) >= epochs:
        raise ValueError(f"--resume {resume}: the run already finished all {epochs} epoch(s); nothing to resume")
    return state


def _build_model_and_config(arch: str, train_set: Any, recipe: dict[str, Any], weights: str | None,
                            output_stride: int, resumed: bool) -> tuple[Any, dict[str, Any]]:
    """The untrained (or to-be-resumed) model and the checkpoint config describing it."""
    from camkit.plugin_manager import lookup

    sample = train_set[0]["input"]
    in_channels = int(sample.shape[0])
    options: dict[str, Any] = {} if in_channels == (1 if arch == "mnist-gap" else 3) else {"in_channels": in_channels}
    if arch.startswith("resnet"):
        if weights:
            options["weights"] = weights
        if output_stride != 32:
            options["output_stride"] = output_stride
            if weights:  # dilate after the removed strides: the pretrained layers keep their receptive field
                options["dilate"] = True
    # the checkpoint holds every weight: rebuilding (or resuming) must not look for the cache again
    saved_options = {key: value for key, value in options.items() if key != "weights"}
    model = lookup("models", arch)(num_classes=len(train_set.classes), **(saved_options if resumed else options))
    check_model_takes(model, sample, arch)
    config = {"model": arch, "model_options": saved_options, "classes": list(train_set.classes), "domain": "image",
              "arch": arch, "input_size": dataset_input_size(train_set), "in_channels": in_channels,
              "mean": list(train_set.mean), "std": list(train_set.std), "input_layout": "NCHW",
              "data": recipe["data"], "seed": recipe["seed"], "epochs": recipe["epochs"], "training": recipe}
    return model, config


def _train_with_checkpoints(model: Any, config: dict[str, Any], train_set: Any, val_set: Any, out: Path, state: Any,
                            resume: str | Path | None, workers: int) -> dict[str, Any]:
    """Train, saving a checkpoint after every epoch; an interruption or a diverging loss names the last
    good checkpoint."""
    from camkit.checkpoint import save_checkpoint, save_training_state
    from camkit.validation import NonFiniteError
    from camkit_plugins.image.train import train_classifier

    recipe, epochs = config["training"], config["epochs"]
    last_good: dict[str, Any] = {"where": None if resume is None else Path(resume),
                                 "epoch": 0 if state is None else int(state["epoch"])}

    def save_epoch(epoch: int, training: dict[str, Any]) -> None:
        config.update(epochs_done=epoch, val_accuracy=training["history"]["val_accuracy"],
                      skipped_files=training["skipped"])
        save_checkpoint(out, model, config)  # refuses non-finite weights before writing anything
        save_training_state(out, training)  # self-contained: a kill between the two files still resumes
        last_good.update(where=out, epoch=epoch)

    def where() -> str:
        if last_good["where"] is None:
            return "no checkpoint was written (no epoch finished)"
        return f"the last good checkpoint is {last_good['where']} (epoch {last_good['epoch']} of {epochs})"

    try:
        return train_classifier(model, train_set, val_set, epochs=epochs, lr=recipe["lr"],
                                batch_size=recipe["batch_size"], seed=recipe["seed"], workers=workers,
                                flip=recipe["flip"], desc=recipe["arch"], on_epoch_end=save_epoch, resume=state)
    except KeyboardInterrupt as exc:
        resume_hint = f"; continue with: camkit train image --resume {last_good['where']}" if last_good["where"] else ""
        raise KeyboardInterrupt(where() + resume_hint) from exc
    except NonFiniteError as exc:  # resuming would diverge again: the advice is a new run
        raise NonFiniteError(f"{exc}: training stopped; {where()}; try a lower --lr than {recipe['lr']}, or check "
                             "the data") from exc


def check_model_takes(model: Any, sample: Any, arch: str) -> None:
    """One forward pass of ``sample`` (in eval mode, without gradients, the model left as it was), so inputs
    too small for the architecture are one clear error before training, not a traceback in it."""
    import torch

    from camkit.capture import evaluation_mode

    try:
        with torch.no_grad(), evaluation_mode(model):
            model(sample[None])
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"--arch {arch} cannot take {'x'.join(map(str, sample.shape))} inputs (--size): "
                         f"{reason}") from exc


def check_same_run(directory: str | Path, recipe: dict[str, Any]) -> None:
    """``--resume DIR`` continues DIR's run: every setting in ``recipe`` must be the one DIR recorded."""
    recorded = recorded_recipe(directory)
    differing = [f"{name} {recipe[name]!r} (the run has {recorded[name]!r})" for name in RECIPE
                 if not _same_setting(name, recipe[name], recorded[name])]
    if differing:
        raise ValueError(f"--resume {directory} continues the same run, but {', '.join(differing)}; drop these "
                         "options to take the run's own, or train a new run without --resume")


def recorded_recipe(directory: str | Path) -> dict[str, Any]:
    """The training settings a checkpoint recorded (``config.json``'s "training")."""
    from camkit.checkpoint import read_config

    recorded = read_config(directory).get("training")
    if not isinstance(recorded, dict) or not set(RECIPE) <= set(recorded):
        raise ValueError(f"--resume {directory}: this checkpoint does not record its training settings "
                         "(written by camkit demo, train skeleton or an older camkit?); it cannot be resumed")
    return {name: recorded[name] for name in RECIPE}


def _same_setting(name: str, given: Any, recorded: Any) -> bool:
    if name == "data" and given != recorded and Path(str(given)).is_dir() and Path(str(recorded)).is_dir():
        return Path(str(given)).resolve() == Path(str(recorded)).resolve()  # one folder, named two ways
    return bool(given == recorded)


# ---------------------------------------------------------------- train image

CLI_DEFAULTS = {"arch": "resnet18", "epochs": 5}  # train_and_save's signature has the others


def train_defaults() -> dict[str, Any]:
    """The settings of a run whose options were not given."""
    import inspect

    parameters = inspect.signature(train_and_save).parameters
    return {**CLI_DEFAULTS, **{name: parameters[name].default for name in RECIPE
                               if parameters[name].default is not inspect.Parameter.empty}}


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    # settings default to None here: with --resume, the ones not given come from the run being resumed
    defaults = train_defaults()
    parser.add_argument("--data", help="a folder of pictures, mnist:DIR, digits or shapes")
    parser.add_argument("--arch", help="resnet18..resnet152 or mnist-gap (default resnet18)")
    parser.add_argument("--epochs", type=int, help=f"default {defaults['epochs']}")
    parser.add_argument("--out", help="checkpoint directory, written at the end of every epoch "
                                      "(default with --resume: that directory)")
    parser.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out")
    parser.add_argument("--seed", type=int, help=f"default {defaults['seed']}")
    parser.add_argument("--size", type=int, help="input size (default: the dataset's)")
    parser.add_argument("--lr", type=float, help=f"default {defaults['lr']}")
    parser.add_argument("--batch-size", type=int, help=f"default {defaults['batch_size']}")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--weights", help="pretrained torchvision weights (DEFAULT), from the local cache")
    parser.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                        help=f"ResNet output stride: 16 or 8 give 2x or 4x finer maps for more compute "
                             f"(default {defaults['output_stride']})")
    parser.add_argument("--val-fraction", type=float, help=f"default {defaults['val_fraction']}")
    parser.add_argument("--flip", action="store_true", default=None, help="random horizontal flips")


def _train_run(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in RECIPE if getattr(args, name) is not None}
    if args.resume:
        settings = {**recorded_recipe(args.resume), **given}  # one that differs: train_and_save says so
        out = args.out or args.resume
    else:
        missing = [f"--{name}" for name in ("data", "out") if getattr(args, name) is None]
        if missing:
            raise ValueError(f"camkit train image needs {' and '.join(missing)} (or --resume DIR)")
        settings, out = {**train_defaults(), "arch": default_arch(args.data), **given}, args.out
    model, config = train_and_save(out=out, workers=args.workers, resume=args.resume, overwrite=args.overwrite,
                                   **settings)
    val = f"val accuracy {100 * config['val_accuracy'][-1]:.2f}%" if config["val_accuracy"] else "no val split"
    print(f"saved {out} ({config['arch']}, {len(config['classes'])} classes, {val})")
    report_test_accuracy(model, config, settings, out, args.workers)
    return 0


def report_test_accuracy(model: Any, config: dict[str, Any], settings: dict[str, Any], out: str | Path,
                         workers: int) -> float | None:
    """Print (and record in ``config.json`` as ``test_accuracy``) the accuracy on ``--data``'s test split,
    when it has one; under torchrun each rank evaluates its shard and rank 0 prints."""
    from camkit.checkpoint import CONFIG_FILE, read_config
    from camkit.io import write_json_atomic
    from camkit_plugins.image.dataset_inputs import inputs_of_dataset
    from camkit_plugins.image.evaluate import evaluate_accuracy_on

    test_set = resolve_test_data(settings["data"], settings["seed"], settings["size"])
    if test_set is None or not len(test_set):
        return None
    inputs = inputs_of_dataset(test_set, "test")
    report = evaluate_accuracy_on(model, config, inputs, workers=workers, progress=False)
    if _is_rank_zero():
        print(f"test accuracy {100 * report.top1:.2f}% ({report.count} images of the test split)")
        recorded = read_config(out)
        write_json_atomic(Path(out) / CONFIG_FILE, {**recorded, "test_accuracy": report.top1})
    return report.top1


# ---------------------------------------------------------------- explain


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    from camkit_plugins.image.explain_files import DECODE_MODES

    parser.add_argument("inputs", nargs="*", help="picture files, folders (recursive; root/<class>/<file> gives "
                        "labels), mnist:DIR (its test split) or a .txt file listing paths")
    parser.add_argument("--dataset", help="a registered data set instead of files (camkit list datasets), e.g. shapes")
    parser.add_argument("--split", default="test", help="with --dataset: train, val or test (default test)")
    model_source_arguments(parser)
    parser.add_argument("--out", required=True, help="directory for the overlays")
    parser.add_argument("--method", default=None, help="cam, gradcam, gradcam++, ... (camkit list methods; default "
                        "cam, gradcam for a detector, whose detections have no classifier rows)")
    parser.add_argument("--method-option", action="append", default=[], dest="method_options", metavar="NAME=VALUE",
                        help="an option of the method, e.g. chunk_size=64 (repeat for more; values are JSON, "
                             "else text)")
    parser.add_argument("--topk", type=int, default=None, help="also one panel per class for the top k")
    parser.add_argument("--save-maps", action="store_true", help="write the raw maps as <name>_maps.npy")
    parser.add_argument("--no-grid", action="store_true", help="do not write grid.png")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the heat map in the blend")
    parser.add_argument("--device", default="cpu")
    # model families (issue 22): detectors and non-tensor outputs
    parser.add_argument("--max-detections", type=int, help="detectors: explain the best N detections "
                        "of each picture, one overlay each with its box, label and score (default 5)")
    parser.add_argument("--min-score", type=float, help="detectors: keep detections scoring at least this "
                        "(default: the model's own, 0.25 for YOLO)")
    parser.add_argument("--output", help="which part of a non-tensor model output is scored: a key, attribute "
                        "or index (default: the logits, 'out', or the first tensor)")
    parser.add_argument("--decode", default="auto", choices=DECODE_MODES,
                        help="where JPEGs are decoded: in the workers, or in batches on --device "
                             "(nvjpeg on a GPU); auto = device on CUDA, workers elsewhere")
    _dataset_scale_arguments(parser)


def model_source_arguments(parser: argparse.ArgumentParser, checkpoint_help: str = "directory written by camkit "
                           "train image", layer: bool = True) -> None:
    """``--checkpoint`` or ``--model`` and the preprocessing options of ``--model`` (``camkit explain``,
    ``camkit eval image`` and ``camkit app`` read them through ``load_image_model``)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help=checkpoint_help)
    source.add_argument("--model", metavar="SPEC", help="a pretrained network: torchvision:NAME, timm:NAME, "
                        "hf:NAME_OR_PATH, package.module:callable, file.py:callable, or a TorchScript / torch.export "
                        "file (weights from the local cache only)")
    parser.add_argument("--weights", default="DEFAULT", help="with --model: DEFAULT, a weight name, or none")
    parser.add_argument("--labels", help="with --model: class names, 'imagenet' or a file with one name per line")
    parser.add_argument("--size", type=int, help="with --model: input size (default: the weights' own, else 224)")
    parser.add_argument("--mean", type=_floats, help="with --model: normalisation mean R,G,B")
    parser.add_argument("--std", type=_floats, help="with --model: normalisation std R,G,B")
    if layer:
        parser.add_argument("--layer", help="features to explain: a module name, or NAME:input (default: what "
                            "global pooling receives)")


def _dataset_scale_arguments(parser: argparse.ArgumentParser) -> None:
    from camkit_plugins.image.explain_files import MAP_DTYPES, TARGET_MODES
    from camkit_plugins.image.explain_run import MANIFEST_FORMATS

    parser.add_argument("--targets", default="auto", choices=TARGET_MODES,
                        help="classes explained: predicted, label (labelled inputs), auto = label with --save-masks "
                             "when labels are known, else predicted")
    parser.add_argument("--no-overlays", action="store_true", help="no overlays, page or grid: map dumps only")
    parser.add_argument("--map-dtype", default="float32", choices=MAP_DTYPES, help="dtype of the .npy maps")
    parser.add_argument("--save-masks", action="store_true",
                        help="write <name>_mask.png pseudo-masks (VOC palette): 1 + class of the strongest map "
                             "above --background, else 0")
    parser.add_argument("--background", type=float, default=0.2, help="pseudo-mask background threshold")
    parser.add_argument("--scales", type=_floats, default=(1.0,),
                        help="test-time scales averaged, e.g. 1,0.5,1.5,2 (the WSSS protocol)")
    parser.add_argument("--flip", action="store_true", help="also average the mirrored image's maps")
    parser.add_argument("--manifest", default="jsonl", choices=MANIFEST_FORMATS, help="manifest.jsonl or .csv")
    parser.add_argument("--resume", action="store_true",
                        help="finish the run in --out (a rerun does it anyway; this insists there is one)")
    parser.add_argument("--restart", action="store_true", help="redo every image of the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers separated by commas, e.g. 0.5,0.5,0.5") from None


def load_image_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The model and config of ``--checkpoint`` or ``--model`` (with its preprocessing options)."""
    from camkit.checkpoint import load_checkpoint
    from camkit_plugins.image.model_spec import load_model_spec

    if args.model:
        model, config = load_model_spec(args.model, args.weights, args.labels, args.size, getattr(args, "mean", None),
                                        getattr(args, "std", None))
    else:
        given = [f"--{name}" for name in ("labels", "size", "mean", "std") if getattr(args, name, None) is not None]
        if given or args.weights != "DEFAULT":
            raise ValueError(f"{', '.join(given or ['--weights'])}: only with --model (a checkpoint carries its own "
                             f"weights, preprocessing and classes)")
        model, config = load_checkpoint(args.checkpoint)
    if config.get("domain", "image") != "image":
        raise ValueError(f"{args.checkpoint}: a {config.get('domain')} checkpoint; camkit explain handles images")
    if getattr(args, "layer", None):
        config = {**config, "layer": args.layer}
    if getattr(args, "output", None) is not None:  # model families: an index or a key of the model's output
        config = {**config, "output": int(args.output) if args.output.lstrip("-").isdigit() else args.output}
    return model, config


def parse_method_options(pairs: list[str]) -> dict[str, Any]:
    """``["chunk_size=64", "scales=[1, 2]"]`` -> ``{"chunk_size": 64, "scales": [1, 2]}`` (JSON values, else
    the text itself)."""
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        name, equals, text = pair.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--method-option {pair!r}: write NAME=VALUE, e.g. chunk_size=64")
        try:
            options[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[name.strip()] = text
    return options


def _explain_run(args: argparse.Namespace) -> int:
    from camkit_plugins.image.dataset_inputs import resolve_inputs
    from camkit_plugins.image.explain_files import explain_files

    model, config = load_image_model(args)
    method_options = parse_method_options(args.method_options)
    if config.get("task") == "detection":  # model families: one overlay per detection
        from camkit_plugins.image.detections import explain_detections, print_detection_report

        ignored = [flag for flag, given in (
            ("--topk", args.topk is not None), ("--save-maps", args.save_maps), ("--no-grid", args.no_grid),
            ("--dataset", args.dataset is not None), ("--targets", args.targets != "auto"),
            ("--no-overlays", args.no_overlays), ("--map-dtype", args.map_dtype != "float32"),
            ("--save-masks", args.save_masks), ("--scales", tuple(args.scales) != (1.0,)), ("--flip", args.flip),
            ("--resume", args.resume), ("--restart", args.restart), ("--manifest", args.manifest != "jsonl"),
            ("--decode", args.decode != "auto")) if given]
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: not for a detector, whose pictures get one overlay per "
                             f"detection (its options: --max-detections, --min-score, --method, --alpha, "
                             f"--batch-size, --workers, --device)")
        from camkit_plugins.image.explain_files import collect_image_files

        return print_detection_report(explain_detections(
            model, config, collect_image_files(args.inputs), args.out, method=args.method or "gradcam",
            max_detections=args.max_detections or 5, alpha=args.alpha, device=args.device,
            batch_size=args.batch_size, workers=args.workers, min_score=args.min_score,
            method_options=method_options), args.out)
    if args.max_detections is not None or args.min_score is not None:
        raise ValueError("--max-detections and --min-score are for detectors; this model is a classifier")
    inputs = resolve_inputs(args.inputs, config["classes"], args.dataset, args.split)
    report = explain_files(model, config, inputs, args.out, method=args.method or "cam", topk=args.topk,
                           method_options=method_options,
                           save_maps=args.save_maps, grid=not args.no_grid and not args.no_overlays,
                           batch_size=args.batch_size, workers=args.workers, alpha=args.alpha, device=args.device,
                           decode=args.decode, overlays=not args.no_overlays, map_dtype=args.map_dtype,
                           targets=args.targets, save_masks=args.save_masks, background=args.background,
                           scales=args.scales, flip=args.flip, manifest=args.manifest, restart=args.restart,
                           resume=args.resume, progress=not args.no_progress)
    if _is_rank_zero():
        skipped = f", {report.skipped} already done" if report.skipped else ""
        print(f"explained {report.explained} image(s){skipped} into {args.out} ({report.images_per_second:.1f} "
              f"images/s on this process, {report.total_images_per_second:.1f} in total)")
    if report.bad:
        if _is_rank_zero():
            print(f"error: {len(report.bad)} unreadable file(s):", file=sys.stderr)
            for line in report.bad:
                print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _is_rank_zero() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------- eval image


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", help="a labelled set: root/<class>/<file> folders, mnist:DIR, ...")
    parser.add_argument("--dataset", help="a registered data set instead of files (camkit list datasets), e.g. shapes")
    parser.add_argument("--split", default="test", help="with --dataset: train, val or test (default test)")
    model_source_arguments(parser)
    parser.add_argument("--out", help="folder for accuracy.json, accuracy.md and confusion.png")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    protocols = parser.add_argument_group("data-set CAM protocols")
    protocols.add_argument("--protocol", action="append", default=[], metavar="NAME",
                           help="wsss (pseudo-mask mIoU), wsol (MaxBoxAccV2) or pxap; repeat for several")
    protocols.add_argument("--maps", metavar="DIR", help="score the maps a camkit explain --save-maps run wrote "
                           "instead of computing them")
    protocols.add_argument("--masks", metavar="DIR", help="ground-truth <stem>.png masks (VOC palette: value c is "
                           "the model's class c-1, 0 background, 255 void)")
    protocols.add_argument("--boxes", metavar="DIR_OR_JSON", help="ground-truth boxes: VOC <stem>.xml files or a "
                           "JSON file {stem: [[x0, y0, x1, y1], ...]}")
    protocols.add_argument("--method", default="cam", help="CAM method for maps computed here (default cam)")
    protocols.add_argument("--scales", type=_floats, default=(1.0,), help="test-time scales, e.g. 1,0.5,1.5,2")
    protocols.add_argument("--flip", action="store_true", help="also average the mirrored image's maps")
    protocols.add_argument("--baseline", help="score a model-free map instead: center or random")
    protocols.add_argument("--background", type=float, help="WSSS: also report the mIoU at this background threshold")


def _eval_run(args: argparse.Namespace) -> int:
    from camkit.distributed import joined
    from camkit_plugins.image.dataset_inputs import resolve_inputs
    from camkit_plugins.image.evaluate import accuracy_table, evaluate_accuracy_on, evaluation_files

    model, config = load_image_model(args)
    if config.get("task") == "detection":
        raise ValueError(f"{config.get('model', 'the model')} is a detector: camkit eval image scores classifiers "
                         f"(top-1 / top-5 accuracy, the WSOL / WSSS protocols); explain its detections with "
                         f"camkit explain")
    inputs = resolve_inputs(args.inputs, config["classes"], args.dataset, args.split)
    bad: list[str] = []
    with joined(args.device) as distributed:  # one process group for both steps
        if inputs.labelled or not args.protocol:
            report = evaluate_accuracy_on(model, config, inputs, batch_size=args.batch_size, workers=args.workers,
                                          device=args.device, progress=not args.no_progress, distributed=distributed)
            bad = report.bad
            if _is_rank_zero():
                print(accuracy_table(report), end="")
                if args.out:
                    print(f"wrote {', '.join(str(path) for path in evaluation_files(args.out, report))}")
        if args.protocol:
            bad = bad or _protocols_run(args, model, config, inputs, distributed)
    if bad and _is_rank_zero():
        print(f"error: {len(bad)} unreadable file(s), not counted:", file=sys.stderr)
        for line in bad:
            print(f"  {line}", file=sys.stderr)
    return 1 if bad else 0


def _protocols_run(args: argparse.Namespace, model: Any, config: dict[str, Any], inputs: Any,
                   distributed: Any) -> list[str]:
    from camkit.io import output_folder, write_json_atomic, write_text_atomic
    from camkit_plugins.image.protocols_run import (
        GroundTruth,
        ProtocolSettings,
        jsonable,
        protocol_table,
        run_protocols,
    )

    truth = GroundTruth(inputs, list(config["classes"]), Path(args.masks) if args.masks else None,
                        Path(args.boxes) if args.boxes else None)
    settings = ProtocolSettings(args.protocol, Path(args.maps) if args.maps else None, args.method, args.scales,
                                args.flip, args.baseline, args.background)
    results = run_protocols(model, config, inputs, truth, settings, batch_size=args.batch_size, workers=args.workers,
                            device=args.device, progress=not args.no_progress, distributed=distributed)
    if _is_rank_zero():
        table = protocol_table(results, config["classes"])
        print(table, end="")
        if args.out:
            folder = output_folder(args.out)
            write_json_atomic(folder / "protocols.json", jsonable(results))
            write_text_atomic(folder / "protocols.md", table)
    return list(results["unreadable"])


# ---------------------------------------------------------------- demo


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="camkit-demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny data and one epoch (a smoke test, not the bars)")


def _demo_run(args: argparse.Namespace) -> int:
    from camkit_plugins.image.demo import run_demo

    summary = run_demo(args.out, seed=args.seed, quick=args.quick)
    if not summary["bars_met"] and not args.quick:  # everything was written; the report says which bar
        print(f"note: not every quality bar was met; see {args.out}/localization.md", file=sys.stderr)
    return 0


def command_table() -> dict[str, Any]:
    from camkit.cli import Command

    return {
        "train image": Command("train an image classifier (ResNet or mnist-gap) and save a checkpoint",
                               _train_arguments, _train_run),
        "explain": Command("CAMs of pictures or whole data sets (torchrun, resumable): overlays, maps, pseudo-masks, "
                           "manifest",
                           _explain_arguments, _explain_run),
        "eval image": Command("accuracy of an image classifier on a labelled set: top-1, top-5, per class, "
                              "confusion matrix (and the WSSS / WSOL map protocols)", _eval_arguments, _eval_run),
        "demo": Command("train on the embedded digits and synthetic shapes, write maps and a localisation report",
                        _demo_arguments, _demo_run),
    }
