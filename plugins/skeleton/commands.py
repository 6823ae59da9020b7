"""``camkit train skeleton``, ``camkit explain skeleton`` and ``camkit eval skeleton``.

Training runs distributed (DDP) when launched by ``torchrun`` (gloo on the CPU, nccl on GPUs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from camkit.cli import Command


def _key_values(pairs: list[str] | None) -> dict[str, Any]:
    """``["size=64", "root=/data"]`` -> ``{"size": 64, "root": "/data"}`` (values read as JSON when they parse)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"option {pair!r} is not KEY=VALUE")
        key, value = pair.split("=", 1)
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def _dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None,
                        help="skeleton-synthetic (default for training), ntu-skeleton or skeleton-npy")
    parser.add_argument("--data-option", "-d", action="append", metavar="KEY=VALUE",
                        help="dataset option, e.g. -d size=400 -d frames=48 -d root=FOLDER (repeatable)")
    parser.add_argument("--seed", type=int, default=0)


# ---------------------------------------------------------------- train


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _dataset_arguments(parser)
    parser.add_argument("--model", default="ragcn", help="stgcn or ragcn (default)")
    parser.add_argument("--streams", type=int, default=1, help="RA-GCN streams, 1-4")
    parser.add_argument("--model-option", "-m", action="append", metavar="KEY=VALUE",
                        help="model option, e.g. -m config=tiny -m mask_rule=topk -m mask_amount=20")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--occlude-parts", type=float, default=0.0, metavar="P",
                        help="augmentation: with probability P per training clip, zero one random body-part set "
                             "of the NTU-25 graph (left arm, right arm, two hands, two legs, trunk) in every frame")
    parser.add_argument("--out", required=True, help="checkpoint directory")


def _train_run(args: argparse.Namespace) -> int:
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler
    from tqdm import tqdm

    import camkit
    from camkit.checkpoint import save_checkpoint
    from camkit_plugins.skeleton.models import ra_gcn_loss, unwrap

    from camkit.distributed import Distributed, local_device

    device = local_device("auto")
    job = Distributed.from_environment(device)  # selects this rank's GPU; gloo on CPU
    rank, world = job.rank, job.world
    torch.manual_seed(args.seed)
    dataset_name = args.dataset or "skeleton-synthetic"
    data_options = _key_values(args.data_option)
    builder = camkit.lookup("datasets", dataset_name)
    train_set = builder(split="train", seed=args.seed, **data_options)
    val_set = builder(split="val", seed=args.seed, **data_options)
    c, _, _, m = train_set.sample_shape
    model_options = {"in_channels": c, "persons": m, "graph": train_set.graph, **_key_values(args.model_option)}
    if args.model == "ragcn":
        model_options.setdefault("streams", args.streams)
    model = camkit.lookup("models", args.model)(num_classes=len(train_set.classes), **model_options)
    model.to(device)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=args.seed) if world > 1 else None
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler,
                        generator=torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.epochs * len(loader), 1))
    multi_stream = args.model == "ragcn"
    occluder = torch.Generator().manual_seed(args.seed + 7919)
    accuracy = None
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        model.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", disable=rank != 0, leave=False)
        for batch in bar:
            x, y = batch["input"].to(device), batch["label"].to(device)
            if args.occlude_parts > 0:
                x = occlude_random_parts(x, args.occlude_parts, occluder)
            if multi_stream:
                loss = ra_gcn_loss(model(x, labels=y, per_stream=True), y)
            else:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if rank == 0:
            accuracy = _accuracy(unwrap(model), val_set, device)
            print(f"epoch {epoch + 1}: loss {loss.item():.4f}, val accuracy {100 * accuracy:.1f}%", flush=True)
    if rank == 0:
        config = {"model": args.model, "model_options": model_options, "classes": list(train_set.classes),
                  "domain": "skeleton", "input_layout": "NCTVM", "input_shape": list(train_set.sample_shape),
                  "graph": model_options.get("graph", "ntu25"), "dataset": dataset_name,
                  "dataset_options": data_options, "seed": args.seed, "epochs": args.epochs,
                  "val_accuracy": accuracy, "world_size": world, "occlude_parts": args.occlude_parts}
        save_checkpoint(args.out, unwrap(model), config)
        print(f"checkpoint written to {args.out}")
    if world > 1:
        dist.barrier()
    job.close()
    return 0


def occlude_random_parts(x: Any, probability: float, generator: Any) -> Any:
    """Training augmentation: each clip, with ``probability``, gets one body-part set of
    ``NTU25_PARTS`` (chosen uniformly) zeroed in every frame. Needs the NTU-25 joints."""
    import torch

    from camkit_plugins.skeleton.graph import NTU25_PARTS

    if x.shape[3] != 25:
        raise ValueError(f"--occlude-parts needs NTU-25 joints, got V={x.shape[3]}")
    parts = torch.zeros(len(NTU25_PARTS), 25, dtype=torch.bool)
    for i, joints in enumerate(NTU25_PARTS.values()):
        parts[i, list(joints)] = True
    n = x.shape[0]
    which = torch.randint(len(NTU25_PARTS), (n,), generator=generator)
    hit = torch.rand(n, generator=generator) < probability
    hidden = parts[which] & hit[:, None]
    return x * (~hidden).to(x.dtype)[:, None, None, :, None].to(x.device)


def _accuracy(model: Any, dataset: Any, device: Any, batch_size: int = 128) -> float:
    """Top-1 accuracy on ``dataset`` (0.0 for an empty one); restores each submodule's own flag."""
    from torch.utils.data import DataLoader

    from camkit.evaluation import count_correct

    correct, _ = count_correct(model, DataLoader(dataset, batch_size=batch_size), device)
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


def _load_data(args: argparse.Namespace, config: dict[str, Any], split: str) -> Any:
    import camkit

    name = args.dataset or config.get("dataset", "skeleton-synthetic")
    options = dict(config.get("dataset_options", {})) if name == config.get("dataset") else {}
    options.update(_key_values(args.data_option))
    return camkit.lookup("datasets", name)(split=split, seed=args.seed, **options)


def _explain_run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    import camkit
    from camkit.checkpoint import load_checkpoint
    from camkit_plugins.skeleton.evaluation import frame_importance, joint_importance
    from camkit_plugins.skeleton.render import render_joint_time, render_skeleton

    model, config = load_checkpoint(args.checkpoint)
    dataset = _load_data(args, config, args.split)
    count = min(args.count, len(dataset))
    items = [dataset[i] for i in range(count)]
    x = torch.stack([item["input"] for item in items])
    result = camkit.explain(model, x, method=args.method, reduce="M")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "maps.npy", result.numpy())
    graph = config.get("graph", "ntu25")
    joints = joint_importance(result.maps)
    frames = frame_importance(result.maps)
    summary = []
    names = config["classes"]
    for i, item in enumerate(items):
        predicted, truth = names[int(result.targets[i])], names[item["label"]]
        title = f"clip {i}: predicted {predicted} (true {truth})"
        render_joint_time(result.maps[i], out / f"clip{i}_joint_time.png", graph, title, item.get("mask"))
        render_skeleton(item["input"], result.maps[i], out / f"clip{i}_skeleton.png", graph, args.frames, title,
                        gif=out / f"clip{i}.gif" if args.gif else None)
        top = joints[i].topk(3)
        joint_names = _joint_names(graph)
        summary.append({"clip": i, "predicted": predicted, "true": truth, "score": float(result.scores[i]),
                        "top joints": {joint_names[int(j)]: round(float(s), 3) for s, j in zip(top.values, top.indices)},
                        "peak frame": int(frames[i].argmax())})
        print(f"{title}; top joints: {', '.join(summary[-1]['top joints'])}")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
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
    parser.add_argument("--hidden-frames", type=int, default=None, help="frames zeroed in the random-frame test "
                        "(default: a third of the clip)")
    parser.add_argument("--mask-option", "-m", action="append", metavar="KEY=VALUE",
                        help="override an RA-GCN mask option of every checkpoint (masks are no weights), "
                             "e.g. -m absent_counts=true")
    parser.add_argument("--label", action="append", default=None,
                        help="column name per checkpoint, one per checkpoint (default: folder name and stream "
                             "count); checkpoints sharing a label (e.g. seeds) are reported as mean ± std")
    parser.add_argument("--out", required=True, help="folder for results.md, results.json, robustness.png")


def _eval_run(args: argparse.Namespace) -> int:
    from camkit.checkpoint import load_checkpoint
    from camkit_plugins.skeleton.evaluation import evaluate, markdown_table, plot_results, summarise_runs

    runs: dict[str, list[dict[str, float]]] = {}
    dataset = None
    overrides = _key_values(args.mask_option)
    if args.label is not None and len(args.label) != len(args.checkpoints):
        raise SystemExit(f"{len(args.label)} --label for {len(args.checkpoints)} checkpoints")
    for i, path in enumerate(args.checkpoints):
        model, config = load_checkpoint(path)
        if overrides and hasattr(model, "set_mask_options"):
            model.set_mask_options(**overrides)
        if dataset is None:
            dataset = _load_data(args, config, args.split)
        streams = config["model_options"].get("streams", 1)
        label = args.label[i] if args.label else f"{Path(path).name} ({streams} stream{'s' if streams > 1 else ''})"
        runs.setdefault(label, []).append(evaluate(model, dataset, frames_hidden=args.hidden_frames, seed=args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, spread = summarise_runs(runs)
    table = markdown_table(results, spread)
    (out / "results.md").write_text(table)
    report = {label: results[label] if len(runs[label]) == 1 else
              {"mean": results[label], "std": spread[label], "runs": runs[label], "checkpoints": len(runs[label])}
              for label in runs}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    plot_results(results, str(out / "robustness.png"), spread)
    print(table)
    return 0


COMMANDS = {
    "train skeleton": Command("train an ST-GCN / RA-GCN on skeleton data (DDP under torchrun)", _train_arguments, _train_run),
    "explain skeleton": Command("joint-by-time CAMs of a skeleton checkpoint, as pictures", _explain_arguments, _explain_run),
    "eval skeleton": Command("accuracy, CAM quality and occlusion robustness of skeleton checkpoints",
                             _eval_arguments, _eval_run),
}
