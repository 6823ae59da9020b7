"""``camkit app``: load the model, then serve the explorer page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from camkit_plugins.app.server import MAX_CLIPS, MAX_UPLOAD_MB
    from camkit_plugins.image.commands import model_source_arguments

    # the model's arguments are camkit explain's (the page picks the layer itself)
    model_source_arguments(parser, "directory written by camkit train image / train skeleton", layer=False)
    parser.add_argument("--examples", nargs="*", default=[], metavar="PICTURE",
                        help="pictures offered in the page (the only files of this machine it can read)")
    parser.add_argument("--clips", type=int, default=MAX_CLIPS, help="skeleton checkpoints: clips of the test split "
                        "offered")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload accepted")
    parser.add_argument("--device", default="cpu")


def load(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[Any]]:
    """``(model, config, clips)`` for the arguments (clips only for a skeleton checkpoint)."""
    from camkit.checkpoint import read_config
    from camkit_plugins.image.commands import load_image_model

    given = [f"--{name}" for name in ("labels", "size", "mean", "std") if getattr(args, name, None) is not None]
    if args.checkpoint and (given or args.weights != "DEFAULT"):
        raise ValueError(f"{', '.join(given or ['--weights'])}: only with --model (a checkpoint carries its own)")
    if args.model or read_config(args.checkpoint).get("domain") != "skeleton":
        model, config = load_image_model(args)
        if config.get("task") == "detection":
            raise ValueError(f"{args.model} is a detector: the explorer shows classifiers' classes; explain "
                             f"detections with camkit explain --model {args.model}")
        return model, config, []
    from camkit_plugins.skeleton.commands import load_dataset, load_skeleton_checkpoint

    if args.examples:
        raise ValueError("--examples: pictures are for image models; a skeleton checkpoint offers its test clips")
    if args.clips < 1:
        raise ValueError(f"--clips {args.clips}: offer at least one clip")
    model, config = load_skeleton_checkpoint(args.checkpoint)
    dataset = load_dataset(config.get("dataset", "skeleton-synthetic"), dict(config.get("dataset_options", {})),
                           "test", 0)
    return model, config, [dataset[i]["input"] for i in range(min(args.clips, len(dataset)))]


def run(args: argparse.Namespace) -> int:
    from camkit_plugins.app.explorer import Explorer
    from camkit_plugins.app.server import build_app, launch

    missing = [path for path in args.examples if not Path(path).is_file()]
    if missing:
        raise ValueError(f"--examples: no such file: {', '.join(missing)}")
    if args.max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb {args.max_upload_mb}: a positive size in megabytes")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: a port is 1-65535 (leave it out for the first free one from 7860)")
    model, config, clips = load(args)
    explorer = Explorer(model.to(args.device), config)
    app = build_app(explorer, args.examples, clips)
    print(f"camkit explorer of {config.get('model', args.checkpoint)}; Ctrl-C stops it")
    launch(app, args.host, args.port, args.max_upload_mb)
    return 0
