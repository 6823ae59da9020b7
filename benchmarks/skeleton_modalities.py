"""One model per modality, their 2 : 2 : 1 : 1 ensemble and RA-GCN's protocol, on the generator.

Trains an ST-GCN per modality (joint, bone, joint-motion, bone-motion) with ``camkit train skeleton``,
fuses them with ``camkit ensemble skeleton`` and evaluates all five with ``camkit eval skeleton
--protocol ragcn`` (the paper's occlusion table beside the published rows, per-class accuracy, a
confusion matrix per model). Everything goes through the CLI, as a user would run it.

    .venv/bin/python benchmarks/skeleton_modalities.py --out runs/modalities [--epochs 6] [--size 800]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from camkit.cli import main
from camkit_plugins.skeleton.modalities import MODALITIES


def run(arguments: list[str]) -> None:
    code = main(arguments)
    if code != 0:
        raise SystemExit(f"camkit {' '.join(arguments)} exited with {code}")


def benchmark(out: Path, epochs: int, size: int, frames: int, seed: int) -> None:
    data = ["-d", f"size={size}", "-d", f"frames={frames}", "--seed", str(seed)]
    seconds = {}
    for modality in MODALITIES:
        start = time.perf_counter()
        run(["train", "skeleton", *data, "--model", "stgcn", "--modality", modality, "-m", "dropout=0.1",
             "--epochs", str(epochs), "--out", str(out / modality)])
        seconds[modality] = time.perf_counter() - start
    run(["ensemble", "skeleton", "--checkpoints", *(str(out / m) for m in MODALITIES), "--out", str(out / "ensemble")])
    labels = [*MODALITIES, "ensemble 2:2:1:1"]
    run(["eval", "skeleton", "--protocol", "ragcn", "--checkpoints", *(str(out / m) for m in MODALITIES),
         str(out / "ensemble"), *(f"--label={label}" for label in labels), "--seed", "0", "-d", "size=240",
         "--out", str(out / "eval")])
    print("training seconds: " + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--size", type=int, default=800, help="training clips (the test split: 240)")
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    benchmark(options.out, options.epochs, options.size, options.frames, options.seed)
