"""`camkit eval image`: a classifier's accuracy on a labelled image set (top-1, top-5, per class, the
confusion matrix and its picture), sharded under ``torchrun`` like `camkit explain`; the counts add up
over the ranks, so N processes report exactly what one does."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camkit_plugins.image.dataset_inputs import ImageInputs

TOP_K = 5


@dataclass
class AccuracyReport:
    """``confusion[i, j]``: images of class i predicted j (int64 (C, C)); ``top5_correct``: images whose
    label is among the ``min(5, C)`` highest scores; ``bad``: unreadable files (named, not counted)."""

    classes: list[str]
    confusion: Any
    top5_correct: int
    bad: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(self.confusion.trace() / self.count) if self.count else float("nan")

    @property
    def top5(self) -> float:
        return self.top5_correct / self.count if self.count else float("nan")

    def per_class(self) -> dict[str, float]:
        """Recall of each class (correct / images of that class); NaN for a class without images."""
        rows = self.confusion.sum(axis=1)
        return {name: float(self.confusion[i, i] / rows[i]) if rows[i] else float("nan")
                for i, name in enumerate(self.classes)}

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.count, "top1": self.top1, f"top{min(TOP_K, len(self.classes))}": self.top5,
                "per_class": self.per_class(), "classes": self.classes, "confusion": self.confusion.tolist(),
                "unreadable": self.bad}


def evaluate_accuracy_on(model: Any, config: dict[str, Any], inputs: ImageInputs, batch_size: int = 64,
                         workers: int = 2, device: Any = "cpu", progress: bool = True,
                         distributed: Any = None) -> AccuracyReport:
    """Top-1 / top-5 accuracy and the confusion matrix of ``model`` over the labelled ``inputs``
    (labels must be classes of the model), preprocessed with ``config``'s size, mean and std. Each
    ``torchrun`` rank takes its batches (`explain_files.rank_positions`) and the counts are summed
    (``distributed``: a ``camkit.distributed.Distributed`` to use; default: join the job, leave it after)."""
    import torch
    from tqdm import tqdm

    from camkit.capture import evaluation_mode
    from camkit.distributed import joined, local_device
    from camkit_plugins.image.explain_files import shard_loader

    classes = list(config["classes"])
    labels = torch.tensor(inputs.label_indices(classes))
    device = local_device(device)
    with joined(device, distributed) as distributed:
        loader, positions = shard_loader(inputs, config, batch_size, workers, distributed)
        confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)
        top5 = torch.zeros((), dtype=torch.int64)
        bad: list[str] = []
        model = model.to(device)
        rank_text = f" [rank {distributed.rank}/{distributed.world}]" if distributed.world > 1 else ""
        with evaluation_mode(model), torch.no_grad(), tqdm(total=len(positions), desc=f"eval{rank_text}", unit="img",
                                                           position=distributed.rank, disable=not progress) as bar:
            for items in loader:
                good = [item for item in items if "error" not in item]
                bad += [item["error"] for item in items if "error" in item]
                if good:
                    logits = model(torch.stack([item["input"] for item in good]).to(device)).float().cpu()
                    truth = labels[[item["index"] for item in good]]
                    confusion += torch.bincount(truth * len(classes) + logits.argmax(1),
                                                minlength=len(classes) ** 2).view(len(classes), len(classes))
                    ranked = logits.topk(min(TOP_K, len(classes)), dim=1).indices
                    top5 += (ranked == truth[:, None]).any(dim=1).sum()
                bar.update(len(items))
        confusion, top5 = distributed.sum(confusion), distributed.sum(top5)
        bad = [line for part in distributed.gather(bad) for line in part]
    return AccuracyReport(classes, confusion.numpy(), int(top5), bad)


def save_confusion_picture(path: str | Path, report: AccuracyReport, title: str = "") -> Path:
    """The confusion matrix as a PNG: rows (true class) normalised to 1, counts written in the cells
    when there are at most 20 classes. Written atomically."""
    import numpy as np

    from camkit.display import figure_and_axes
    from camkit.io import atomic_path

    count = len(report.classes)
    rows = report.confusion.sum(axis=1, keepdims=True)
    share = np.divide(report.confusion, rows, out=np.zeros(report.confusion.shape), where=rows > 0)
    side = min(2.0 + 0.45 * count, 24.0)
    figure, axis = figure_and_axes(figsize=(side + 1.5, side))
    shown = axis.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axis, fraction=0.046, label="share of the true class")
    if count <= 40:
        axis.set_xticks(range(count), report.classes, rotation=90, fontsize=8)
        axis.set_yticks(range(count), report.classes, fontsize=8)
    if count <= 20:
        for i in range(count):
            for j in range(count):
                if report.confusion[i, j]:
                    axis.text(j, i, str(report.confusion[i, j]), ha="center", va="center", fontsize=7,
                              color="white" if share[i, j] > 0.5 else "black")
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title or f"top-1 {100 * report.top1:.2f}% of {report.count} images")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    return Path(path)


def accuracy_table(report: AccuracyReport) -> str:
    """Markdown: the summary line and one row per class."""
    lines = [f"top-1 {100 * report.top1:.2f}%, top-{min(TOP_K, len(report.classes))} {100 * report.top5:.2f}% "
             f"over {report.count} images", "", "| class | images | accuracy |", "|---|---:|---:|"]
    rows = report.confusion.sum(axis=1)
    for (name, value), images in zip(report.per_class().items(), rows):
        lines.append(f"| {name} | {int(images)} | {'n/a' if images == 0 else f'{100 * value:.2f}%'} |")
    return "\n".join(lines) + "\n"


def evaluation_files(out: str | Path, report: AccuracyReport, extra: dict[str, Any] | None = None) -> list[Path]:
    """``accuracy.json``, ``accuracy.md`` and ``confusion.png`` in ``out`` (atomically)."""
    from camkit.io import output_folder, write_json_atomic, write_text_atomic

    folder = output_folder(out)
    return [write_json_atomic(folder / "accuracy.json", {**report.as_dict(), **(extra or {})}),
            write_text_atomic(folder / "accuracy.md", accuracy_table(report)),
            save_confusion_picture(folder / "confusion.png", report)]
