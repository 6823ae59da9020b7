"""``camkit train skeleton``, ``explain skeleton``, ``eval skeleton`` and ``ensemble skeleton``.

Training runs distributed (DDP) when launched by ``torchrun`` (gloo on the CPU, nccl on GPUs), writes
a checkpoint at the end of every epoch and resumes exactly (``--resume``). A user's mistake is a
``ValueError`` / ``KeyError`` / ``FileNotFoundError``, which the CLI reports as one ``camkit: error:``
line with exit status 2. Everything written is written atomically.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from camkit.cli import Command

DATASETS_HELP = "skeleton-synthetic (default for training), ntu-skeleton, pyskl, ctrgcn, stgcn-npy, kinetics-json"


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None, help=DATASETS_HELP)
    parser.add_argument("--data-option", "-d", action="append", metavar="KEY=VALUE",
                        help="dataset option, e.g. -d size=400 -d frames=48 -d root=FOLDER (repeatable)")
    parser.add_argument("--seed", type=int, default=0)


def load_dataset(name: str, options: dict[str, Any], split: str, seed: int) -> Any:
    """The registered dataset ``name`` for ``split``, its options checked against what it accepts."""
    import inspect

    import camkit
    from camkit_plugins.skeleton.options import accepted_options, check_options
    from camkit_plugins.skeleton.preprocess import ClipPipeline

    if "split" in options or "seed" in options:
        raise ValueError("choose the split with --split (explain, eval) or --train-split / --val-split (train) "
                         "and the seed with --seed, not with -d")
    builder = camkit.lookup("datasets", name)
    takes_clip_options = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(builder).parameters.values())
    accepted = accepted_options([builder, *([ClipPipeline] if takes_clip_options else [])], skip=("split", "seed"))
    return builder(split=split, seed=seed, **check_options(options, accepted, f"dataset {name}"))


def check_model_options(model: str, options: dict[str, Any]) -> dict[str, Any]:
    from camkit_plugins.skeleton.models import RAGCN, STGCN
    from camkit_plugins.skeleton.options import accepted_options, check_options

    functions = [RAGCN.__init__, STGCN.__init__] if model == "ragcn" else [STGCN.__init__]
    return check_options(options, accepted_options(functions, skip=("num_classes",)), f"model {model}")


def load_skeleton_checkpoint(path: str) -> tuple[Any, dict[str, Any]]:
    """``(model, config)`` of a skeleton checkpoint; another domain's checkpoint is a clear error."""
    from camkit.checkpoint import load_checkpoint, read_config

    domain = read_config(path).get("domain")
    if domain != "skeleton":
        raise ValueError(f"{path} is {'an' if str(domain)[:1] in 'aeiou' else 'a'} {domain or 'unknown-domain'} "
                         f"checkpoint, not a skeleton one (the skeleton commands need a checkpoint written by "
                         f"'camkit train skeleton' or 'camkit ensemble skeleton')")
    return load_checkpoint(path)


def _data_for_checkpoint(args: argparse.Namespace, config: dict[str, Any], split: str,
                         **forced: Any) -> Any:
    from camkit_plugins.skeleton.options import parse_key_values

    name = args.dataset or config.get("dataset", "skeleton-synthetic")
    options = dict(config.get("dataset_options", {})) if name == config.get("dataset") else {}
    options.update(parse_key_values(args.data_option, "-d"))
    options.update({k: v for k, v in forced.items() if k in options})
    return load_dataset(name, options, split, args.seed)


def _at_least(value: int, minimum: int, flag: str) -> None:
    if value < minimum:
        raise ValueError(f"{flag} must be at least {minimum}, got {value}")


# ---------------------------------------------------------------- train

#: Arguments that define a training run; ``--resume`` takes them from the saved state.
RUN_SETTINGS = ("dataset", "data_option", "seed", "model", "streams", "modality", "model_option", "epochs",
                "batch_size", "lr", "weight_decay", "occlude_parts", "train_split", "val_split")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_arguments(parser)
    parser.add_argument("--model", default="ragcn", help="stgcn or ragcn (default)")
    parser.add_argument("--streams", type=int, default=1, help="RA-GCN streams, 1-4")
    parser.add_argument("--modality", default="joint",
                        help="input modality: joint (default), bone, joint-motion or bone-motion")
    parser.add_argument("--model-option", "-m", action="append", metavar="KEY=VALUE",
                        help="model option, e.g. -m config=tiny -m mask_rule=topk -m mask_amount=20")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--occlude-parts", type=float, default=0.0, metavar="P",
                        help="augmentation: with probability P per training clip, zero one random body-part set "
                             "of the NTU-25 graph (left arm, right arm, two hands, two legs, trunk) in every frame")
    parser.add_argument("--train-split", default="train", help="dataset split to train on (e.g. xsub_train for pyskl)")
    parser.add_argument("--val-split", default="val", help="dataset split for the accuracy printed every epoch")
    parser.add_argument("--out", default=None, help="checkpoint directory, written at the end of every epoch")
    parser.add_argument("--resume", default=None, metavar="DIR",
                        help="continue the run saved in DIR (its own settings) from its last finished epoch; "
                             "--out defaults to DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out")


def _train_run(args: argparse.Namespace) -> int:
    from camkit.checkpoint import check_free_for_training, load_training_state

    resumed = None
    if args.resume is not None:
        resumed = load_training_state(args.resume)
        saved = resumed["arguments"]
        defaults = vars(_train_defaults())
        changed = [key for key in RUN_SETTINGS if getattr(args, key) not in (defaults[key], saved[key])]
        if changed:
            raise ValueError(f"--resume continues {args.resume} with its own settings; "
                             + ", ".join(f"{key} {getattr(args, key)!r} (saved: {saved[key]!r})" for key in changed)
                             + " would change them: start a new run with another --out instead")
        for key in RUN_SETTINGS:
            setattr(args, key, saved[key])
        args.out = args.out or args.resume
        print(f"resuming {args.resume} after epoch {resumed['epoch']} of {args.epochs}", flush=True)
    if args.out is None:
        raise ValueError("train skeleton needs --out DIR (or --resume DIR)")
    check_free_for_training(args.out, args.resume, args.overwrite)
    _at_least(args.epochs, 1, "--epochs")
    _at_least(args.batch_size, 1, "--batch-size")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.occlude_parts <= 1:
        raise ValueError(f"--occlude-parts is a probability in [0, 1], got {args.occlude_parts}")
    return train(args, resumed)


def _train_defaults() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _train_arguments(parser)
    return parser.parse_args([])


@dataclass
class _Run:
    """What one training run holds between epochs: the (possibly DDP-wrapped) model, its optimiser and
    schedule, the data loader, the generators of shuffling and occlusion, and the history so far."""

    model: Any
    loader: Any
    sampler: Any
    optimizer: Any
    schedule: Any
    shuffle: Any
    occluder: Any
    history: list[dict[str, float]]
    first_epoch: int = 0


def train(args: argparse.Namespace, resumed: dict[str, Any] | None = None) -> int:
    """The training loop of ``train skeleton`` (``resumed``: a state written by an earlier run), as steps:
    data, model, one run's state (restored when resuming), then per epoch train, evaluate and save."""
    import torch
    import torch.distributed as dist

    from camkit.distributed import Distributed, local_device
    from camkit.validation import NonFiniteError

    device = local_device("auto")
    torch.manual_seed(args.seed)
    dataset_name, data_options, train_set, val_set = _training_data(args)
    model, model_options = _training_model(args, train_set, device)
    job = Distributed.from_environment(device)  # selects this rank's GPU; gloo on CPU
    run = _training_run(args, model, train_set, device, job, resumed)
    config = {"model": args.model, "model_options": model_options, "classes": list(train_set.classes),
              "domain": "skeleton", "input_layout": "NCTVM", "input_shape": list(train_set.sample_shape),
              "graph": model_options.get("graph", "ntu25"), "dataset": dataset_name,
              "modality": model_options["modality"],
              "dataset_options": data_options, "seed": args.seed, "epochs": args.epochs,
              "world_size": job.world, "occlude_parts": args.occlude_parts}
    out = Path(args.out)
    saved_epoch = run.first_epoch
    try:
        for epoch in range(run.first_epoch, args.epochs):
            loss = _train_epoch(args, run, epoch, device, job)
            if job.rank == 0:
                _evaluate_and_save(args, run, epoch, loss, val_set, device, out, config)
            saved_epoch = epoch + 1
    except NonFiniteError as exc:
        raise NonFiniteError(f"{exc}; stopped without saving it ({_last_good(out, saved_epoch, args.epochs)}); "
                             f"lower --lr or check the data") from None
    except KeyboardInterrupt:
        if job.rank == 0:
            print(f"interrupted: {_last_good(out, saved_epoch, args.epochs)}", file=sys.stderr, flush=True)
        return 130
    if job.rank == 0:
        print(f"checkpoint written to {out}")
    if job.world > 1:
        dist.barrier()
    job.close()
    return 0


def _training_data(args: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    """``(dataset name, its options, train set, validation set)``; a graph file becomes the graph itself."""
    from camkit_plugins.skeleton.graph import portable_graph
    from camkit_plugins.skeleton.options import parse_key_values

    dataset_name = args.dataset or "skeleton-synthetic"
    data_options = parse_key_values(args.data_option, "-d")
    if "graph" in data_options:  # the checkpoint carries the graph itself, not the path of its file
        data_options["graph"] = portable_graph(data_options["graph"])
    train_set = load_dataset(dataset_name, data_options, args.train_split, args.seed)
    val_set = load_dataset(dataset_name, data_options, args.val_split, args.seed)
    if len(train_set) == 0:
        raise ValueError(f"dataset {dataset_name} has no clips in split {args.train_split!r}")
    return dataset_name, data_options, train_set, val_set


def _training_model(args: argparse.Namespace, train_set: Any, device: Any) -> tuple[Any, dict[str, Any]]:
    """The model to train (on ``device``) and the options it was built with, as the checkpoint records them."""
    import camkit
    from camkit_plugins.skeleton.graph import portable_graph
    from camkit_plugins.skeleton.modalities import check_modality
    from camkit_plugins.skeleton.options import parse_key_values

    user_model_options = check_model_options(args.model, parse_key_values(args.model_option, "-m"))
    c, _, _, m = train_set.sample_shape
    model_options = {"in_channels": c, "persons": m, "graph": portable_graph(train_set.graph),
                     "modality": check_modality(args.modality), **user_model_options}
    if args.model == "ragcn":
        model_options.setdefault("streams", args.streams)
    model = camkit.lookup("models", args.model)(num_classes=len(train_set.classes), **model_options)
    return model.to(device), model_options


def _training_run(args: argparse.Namespace, model: Any, train_set: Any, device: Any, job: Any,
                  resumed: dict[str, Any] | None) -> _Run:
    """Model (wrapped in DDP for several processes), loader, optimiser, schedule and generators, restored
    from ``resumed`` when given."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from camkit.checkpoint import set_rng_state
    from camkit_plugins.skeleton.models import unwrap

    if job.world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    sampler = DistributedSampler(train_set, job.world, job.rank, shuffle=True, seed=args.seed) \
        if job.world > 1 else None
    shuffle = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=shuffle)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.epochs * len(loader), 1))
    run = _Run(model, loader, sampler, optimizer, schedule, shuffle,
               occluder=torch.Generator().manual_seed(args.seed + 7919), history=[])
    if resumed is not None:
        unwrap(model).load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        set_rng_state(resumed["rng"])
        shuffle.set_state(resumed["generators"]["shuffle"])
        run.occluder.set_state(resumed["generators"]["occluder"])
        run.history, run.first_epoch = list(resumed["history"]), int(resumed["epoch"])
    return run


def _train_epoch(args: argparse.Namespace, run: _Run, epoch: int, device: Any, job: Any) -> Any:
    """One pass over the training data; returns the last batch's loss."""
    import torch
    from tqdm import tqdm

    from camkit_plugins.skeleton.models import ra_gcn_loss

    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    run.model.train()
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=job.rank != 0, leave=False)
    for step, batch in enumerate(bar):
        x, y = batch["input"].to(device), batch["label"].to(device)
        if args.occlude_parts > 0:
            x = occlude_random_parts(x, args.occlude_parts, run.occluder)
        if args.model == "ragcn":
            loss = ra_gcn_loss(run.model(x, labels=y, per_stream=True), y)
        else:
            loss = torch.nn.functional.cross_entropy(run.model(x), y)
        require_finite_loss(loss, job, f"epoch {epoch + 1}, batch {step + 1}")
        run.optimizer.zero_grad()
        loss.backward()
        run.optimizer.step()
        run.schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return loss


def _evaluate_and_save(args: argparse.Namespace, run: _Run, epoch: int, loss: Any, val_set: Any, device: Any,
                       out: Path, config: dict[str, Any]) -> None:
    """Validation accuracy, then the checkpoint and the training state of the finished epoch (rank 0)."""
    from camkit.checkpoint import rng_state, save_checkpoint, save_training_state
    from camkit_plugins.skeleton.models import unwrap

    model = unwrap(run.model)
    accuracy = _accuracy(model, val_set, device)
    run.history.append({"epoch": epoch + 1, "loss": float(loss.item()), "val_accuracy": accuracy})
    print(f"epoch {epoch + 1}: loss {loss.item():.4f}, val accuracy {100 * accuracy:.1f}%", flush=True)
    save_checkpoint(out, model, {**config, "epochs_done": epoch + 1, "val_accuracy": accuracy})
    save_training_state(out, {
        "epoch": epoch + 1, "arguments": {key: getattr(args, key) for key in RUN_SETTINGS},
        "model": model.state_dict(), "optimizer": run.optimizer.state_dict(), "schedule": run.schedule.state_dict(),
        "rng": rng_state(), "generators": {"shuffle": run.shuffle.get_state(), "occluder": run.occluder.get_state()},
        "history": run.history})


def _last_good(out: Path, epoch: int, epochs: int) -> str:
    if epoch == 0:
        return "no epoch finished, nothing was saved"
    return (f"the last good checkpoint is {out} (epoch {epoch} of {epochs}); "
            f"continue with: camkit train skeleton --resume {out}")


def require_finite_loss(loss: Any, job: Any, where: str) -> None:
    """Stop every process at the first non-finite loss (before it reaches the weights). Under DDP the
    processes agree first, so none is left waiting in the next gradient all-reduce."""
    from camkit.validation import NonFiniteError, require_finite

    if job.world > 1:
        finite = loss.detach().isfinite().reshape(1).float()
        if int(job.sum(finite).item()) < job.world and bool(finite.item()):
            raise NonFiniteError(f"the training loss at {where} is not finite on another process")
    require_finite(loss.detach(), f"the training loss at {where}")


def occlude_random_parts(x: Any, probability: float, generator: Any) -> Any:
    """Training augmentation: each clip, with ``probability``, gets one body-part set of
    ``NTU25_PARTS`` (chosen uniformly) zeroed in every frame. Needs the NTU-25 joints."""
    import torch

    from camkit_plugins.skeleton.graph import NTU25_PARTS, skeleton_layout

    if x.shape[3] != 25:
        raise ValueError(f"--occlude-parts needs NTU-25 joints, got V={x.shape[3]}")
    parts = torch.zeros(len(NTU25_PARTS), 25, dtype=torch.bool)
    for i, joints in enumerate(NTU25_PARTS.values()):
        parts[i, list(joints)] = True
    n = x.shape[0]
    which = torch.randint(len(NTU25_PARTS), (n,), generator=generator)
    hit = torch.rand(n, generator=generator) < probability
    hidden = parts[which] & hit[:, None]
    return x * skeleton_layout().broadcast((~hidden).to(device=x.device, dtype=x.dtype), "NV")


def _accuracy(model: Any, dataset: Any, device: Any, batch_size: int = 128) -> float:
    """Top-1 accuracy on ``dataset`` (0.0 for an empty one; several windows per clip averaged);
    restores each submodule's own train/eval flag."""
    import torch
    from torch.utils.data import DataLoader

    from camkit.capture import evaluation_mode
    from camkit_plugins.skeleton.evaluation import clip_scores

    correct = 0
    with evaluation_mode(model), torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            scores = clip_scores(model, batch["input"].to(device))
            correct += int((scores.argmax(dim=1).cpu() == batch["label"]).sum())
    return correct / max(len(dataset), 1)


# ---------------------------------------------------------------- explain


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_arguments(parser)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=4, help="number of clips to explain")
    parser.add_argument("--method", default="cam")
    parser.add_argument("--frames", type=int, default=4, help="key frames in the skeleton drawing")
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF per clip")
    parser.add_argument("--out", required=True, help="output folder (PNGs, maps.npy, summary.json)")


def _explain_run(args: argparse.Namespace) -> int:
    import torch

    import camkit
    from camkit.io import save_numpy_atomic, write_json_atomic
    from camkit_plugins.skeleton.evaluation import frame_importance, joint_importance
    from camkit_plugins.skeleton.render import render_joint_time, render_skeleton

    _at_least(args.count, 1, "--count")
    _at_least(args.frames, 1, "--frames")
    model, config = load_skeleton_checkpoint(args.checkpoint)
    dataset = _data_for_checkpoint(args, config, args.split, test_clips=1)  # a map belongs to one window
    if len(dataset) == 0:
        raise ValueError(f"split {args.split!r} has no clips to explain")
    count = min(args.count, len(dataset))
    items = [dataset[i] for i in range(count)]
    x = torch.stack([item["input"] for item in items])
    result = camkit.explain(model, x, method=args.method, reduce="M")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_numpy_atomic(out / "maps.npy", result.numpy())
    graph = config.get("graph", "ntu25")
    joints = joint_importance(result.maps)
    frames = frame_importance(result.maps)
    joint_names = _joint_names(graph)
    summary = []
    names = config["classes"]
    for i, item in enumerate(items):
        predicted, truth = names[int(result.targets[i])], names[item["label"]]
        title = f"clip {i}: predicted {predicted} (true {truth})"
        render_joint_time(result.maps[i], out / f"clip{i}_joint_time.png", graph, title, item.get("mask"))
        render_skeleton(item["input"], result.maps[i], out / f"clip{i}_skeleton.png", graph, args.frames, title,
                        gif=out / f"clip{i}.gif" if args.gif else None)
        top = joints[i].topk(min(3, len(joint_names)))
        summary.append({"clip": i, "predicted": predicted, "true": truth, "score": float(result.scores[i]),
                        "top joints": {joint_names[int(j)]: round(float(s), 3)
                                       for s, j in zip(top.values, top.indices)},
                        "peak frame": int(frames[i].argmax())})
        print(f"{title}; top joints: {', '.join(summary[-1]['top joints'])}")
    write_json_atomic(out / "summary.json", summary)
    print(f"maps {tuple(result.maps.shape)} ({result.map_letters}) and pictures written to {out}")
    return 0


def _joint_names(graph: Any) -> tuple[str, ...]:
    from camkit_plugins.skeleton.graph import get_graph

    return get_graph(graph).joints


# ---------------------------------------------------------------- eval


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_arguments(parser)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="one or more checkpoints, side by side")
    parser.add_argument("--split", default="test")
    parser.add_argument("--protocol", choices=("camkit", "ragcn"), default="camkit",
                        help="camkit: body parts, class cues, random frames and CAM quality; ragcn: RA-GCN's "
                             "occlusion table (parts, centred frame blocks of 10-50, jitter, random occlusion) "
                             "printed next to the paper's numbers")
    parser.add_argument("--hidden-frames", type=int, default=None, help="frames zeroed in the random-frame test "
                        "(camkit protocol; default: a third of the clip)")
    parser.add_argument("--block-centre", type=int, default=None, metavar="FRAME",
                        help="ragcn protocol: centre the frame blocks on this frame (the released code: 50) "
                             "instead of the middle of each clip")
    parser.add_argument("--mask-option", "-m", action="append", metavar="KEY=VALUE",
                        help="override an RA-GCN mask option of every checkpoint (masks are no weights), "
                             "e.g. -m absent_counts=true")
    parser.add_argument("--label", action="append", default=None,
                        help="column name per checkpoint, one per checkpoint (default: folder name and stream "
                             "count); checkpoints sharing a label (e.g. seeds) are reported as mean ± std")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json, robustness.png and "
                                                     "a confusion matrix per checkpoint")


def _describe(config: dict[str, Any]) -> str:
    """``2 streams``, ``1 stream`` or ``ensemble of 4`` for a column name."""
    if config["model"] == "skeleton-ensemble":
        return f"ensemble of {len(config['model_options']['members'])}"
    streams = config["model_options"].get("streams", 1)
    return f"{streams} stream{'s' if streams > 1 else ''}"


def _apply_mask_options(model: Any, path: str, overrides: dict[str, Any]) -> None:
    from camkit_plugins.skeleton.models import RAGCN

    if not overrides:
        return
    if not isinstance(model, RAGCN):
        raise ValueError(f"{path} is a {type(model).__name__} checkpoint without RA-GCN masks: -m "
                         f"{', '.join(overrides)} does not apply to it")
    model.set_mask_options(**overrides)


def _eval_run(args: argparse.Namespace) -> int:
    from camkit.io import write_json_atomic, write_text_atomic
    from camkit_plugins.skeleton.evaluation import (
        class_report,
        evaluate,
        markdown_table,
        plot_confusion,
        plot_results,
        summarise_runs,
    )
    from camkit_plugins.skeleton.options import parse_key_values
    from camkit_plugins.skeleton.protocols import paper_table, ragcn_conditions

    runs: dict[str, list[dict[str, float]]] = {}
    classes_by_label: dict[str, list[dict[str, Any]]] = {}
    dataset = None
    overrides = parse_key_values(args.mask_option, "-m")
    if args.label is not None and len(args.label) != len(args.checkpoints):
        raise ValueError(f"{len(args.label)} --label for {len(args.checkpoints)} checkpoints: give one per checkpoint")
    if args.hidden_frames is not None:
        _at_least(args.hidden_frames, 0, "--hidden-frames")
    out = Path(args.out)
    for i, path in enumerate(args.checkpoints):
        model, config = load_skeleton_checkpoint(path)
        _apply_mask_options(model, path, overrides)
        if dataset is None:
            dataset = _data_for_checkpoint(args, config, args.split)
            if len(dataset) == 0:
                raise ValueError(f"split {args.split!r} has no clips to evaluate")
        label = args.label[i] if args.label else f"{Path(path).name} ({_describe(config)})"
        conditions = ragcn_conditions(dataset, args.block_centre) if args.protocol == "ragcn" else None
        metrics = evaluate(model, dataset, frames_hidden=args.hidden_frames, seed=args.seed, conditions=conditions)
        report = class_report(model, dataset)
        metrics["top-5 accuracy"] = report["top-5"]
        runs.setdefault(label, []).append(metrics)
        classes_by_label.setdefault(label, []).append(report)
        plot_confusion(report["confusion"], dataset.classes, str(out / f"confusion_{i}_{Path(path).name}.png"),
                       f"{label}: top-1 {100 * report['top-1']:.1f}%, top-5 {100 * report['top-5']:.1f}%")
    results, spread = summarise_runs(runs)
    table = markdown_table(results, spread)
    if args.protocol == "ragcn":
        table = paper_table(results) + "\nAll metrics\n\n" + table
    write_text_atomic(out / "results.md", table)
    report = {label: results[label] if len(runs[label]) == 1 else
              {"mean": results[label], "std": spread[label], "runs": runs[label], "checkpoints": len(runs[label])}
              for label in runs}
    per_class = {label: [dict(zip(dataset.classes, r["per class"])) for r in reports]
                 for label, reports in classes_by_label.items()}
    write_json_atomic(out / "results.json", report)
    write_json_atomic(out / "per_class.json", per_class)
    plot_results(results, str(out / "robustness.png"), spread)
    print(table)
    return 0


# ---------------------------------------------------------------- ensemble


def _ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoints", nargs="+", required=True,
                        help="skeleton checkpoints of one task, e.g. one per modality")
    parser.add_argument("--weights", nargs="+", type=float, default=None,
                        help="fusion weight per checkpoint (default: pyskl's 2 joint, 2 bone, 1 joint-motion, "
                             "1 bone-motion by each checkpoint's modality)")
    parser.add_argument("--out", required=True, help="checkpoint directory of the ensemble")
    parser.add_argument("--overwrite", action="store_true", help="replace the checkpoint already in --out")


def _ensemble_run(args: argparse.Namespace) -> int:
    from camkit.checkpoint import check_free_for_training, save_checkpoint
    from camkit_plugins.skeleton.modalities import FUSION_WEIGHTS
    from camkit_plugins.skeleton.models import build_ensemble

    check_free_for_training(args.out, overwrite=args.overwrite)
    loaded = [load_skeleton_checkpoint(path) for path in args.checkpoints]
    configs = [config for _, config in loaded]
    modalities = [config.get("modality", config["model_options"].get("modality", "joint")) for config in configs]
    weights = args.weights if args.weights is not None else [FUSION_WEIGHTS[m] for m in modalities]
    if len(weights) != len(loaded):
        raise ValueError(f"{len(weights)} --weights for {len(loaded)} checkpoints: give one per checkpoint")
    for path, config in zip(args.checkpoints[1:], configs[1:]):
        for key in ("classes", "input_shape"):
            if config.get(key) != configs[0].get(key):
                raise ValueError(f"{path} has other {key} than {args.checkpoints[0]}: an ensemble fuses models "
                                 f"of one task and input")
        if config["model"] == "skeleton-ensemble":
            raise ValueError(f"{path} is an ensemble already; give its members")
    members = [{"model": config["model"], "model_options": config["model_options"]} for config in configs]
    ensemble = build_ensemble(len(configs[0]["classes"]), members, weights)
    for member, (model, _) in zip(ensemble.members, loaded):
        member.load_state_dict(model.state_dict())
    config = {**{k: configs[0][k] for k in ("classes", "domain", "input_layout", "input_shape", "graph", "dataset",
                                              "dataset_options") if k in configs[0]},
              "model": "skeleton-ensemble", "model_options": {"members": members, "weights": weights},
              "modalities": modalities, "members": list(args.checkpoints)}
    save_checkpoint(args.out, ensemble, config)
    print(f"ensemble of {' + '.join(f'{w:g} x {m}' for w, m in zip(weights, modalities))} written to {args.out}")
    return 0


COMMANDS = {
    "train skeleton": Command("train an ST-GCN / RA-GCN on skeleton data (DDP under torchrun, --resume)",
                              _train_arguments, _train_run),
    "explain skeleton": Command("joint-by-time CAMs of a skeleton checkpoint, as pictures",
                                _explain_arguments, _explain_run),
    "eval skeleton": Command("accuracy, CAM quality and occlusion robustness of skeleton checkpoints "
                             "(--protocol ragcn: the paper's table)", _eval_arguments, _eval_run),
    "ensemble skeleton": Command("late fusion of skeleton checkpoints (e.g. one per modality) into one checkpoint",
                                 _ensemble_arguments, _ensemble_run),
}
