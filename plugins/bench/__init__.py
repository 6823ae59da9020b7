"""camkit plugin: the benchmark suite and the ``camkit bench`` command.

    camkit bench --config benchmarks/configs/shapes.toml
    camkit bench --models resnet18 --datasets shapes --methods cam,gradcam --metrics deletion --samples 32
    torchrun --nproc_per_node=2 -m camkit bench --config FILE     # sharded, same numbers

See docs/evaluation.md. This module imports no torch."""

from __future__ import annotations

import argparse
from typing import Any

from camkit.hookspecs import hookimpl

LIST_FLAGS = ("methods", "metrics", "models", "datasets", "plugins")


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a .json or .toml file with the grid and settings (flags override it)")
    for name in LIST_FLAGS:
        parser.add_argument(f"--{name}", help=f"comma-separated {name}")
    parser.add_argument("--split", help="data set split (default test)")
    parser.add_argument("--samples", type=int, help="samples per data set (default 64)")
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="maps per batch (default 16)")
    parser.add_argument("--chunk-size", type=int, dest="chunk_size",
                        help="perturbed inputs per forward pass in the faithfulness curves (default: 256 on a "
                             "GPU; on a CPU about a million input values, e.g. 7 pictures at 224 px)")
    parser.add_argument("--seed", type=int, help="seed for data, random-init models and baselines (default 0)")
    parser.add_argument("--targets", choices=("predicted", "label"), help="class the maps explain")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1 ...")
    parser.add_argument("--out", help="output folder (default bench-results); finished cells there are reused")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config file's settings overridden by the flags given."""
    from camkit_plugins.bench.config import load_config

    config: dict[str, Any] = load_config(args.config) if args.config else {}
    for name in LIST_FLAGS:
        value = getattr(args, name)
        if value:
            config[name] = [item.strip() for item in value.split(",") if item.strip()]
    for name in ("split", "samples", "batch_size", "chunk_size", "seed", "targets", "device", "out"):
        value = getattr(args, name)
        if value is not None:
            config[name] = value
    if args.no_plots:
        config["plots"] = False
    return config


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from camkit_plugins.bench.runner import run_suite

    config = config_from_args(args)
    records = run_suite(config, progress=not args.quiet)
    out = Path(config.get("out", "bench-results"))
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print((out / "results.md").read_text())
        print(f"{len(records)} cells; results in {out}/ (results.csv, results.md, curves.csv, *.png)")
    return 0


@hookimpl
def camkit_register_commands() -> dict[str, Any]:
    from camkit.cli import Command

    return {"bench": Command("compare CAM methods on models x data sets x metrics (CSV, Markdown, plots)",
                             _arguments, _run)}
