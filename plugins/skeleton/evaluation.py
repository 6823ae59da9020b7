"""Evaluation of skeleton models: accuracy (top-1, top-5, per class, confusion), CAM quality against
ground-truth masks, occlusion robustness.

A batch may hold several windows per clip, ``(N, K, C, T, V, M)`` (``test_clips=K``): the windows
are scored together and their softmax scores averaged, as the reference pipelines do at test time."""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from camkit_plugins.metrics import localization
from camkit_plugins.skeleton.graph import NTU25_PARTS, skeleton_layout
from camkit_plugins.skeleton.render import save_figure


def joint_importance(cam: torch.Tensor) -> torch.Tensor:
    """``(N, V)`` share of each joint in a ``(N, T, V)`` map (summed over time, rows sum to 1)."""
    total = cam.clamp_min(0).sum(dim=1)
    return total / total.sum(dim=1, keepdim=True).clamp_min(1e-12)


def frame_importance(cam: torch.Tensor) -> torch.Tensor:
    """``(N, T)`` share of each frame in a ``(N, T, V)`` map (summed over joints, rows sum to 1)."""
    total = cam.clamp_min(0).sum(dim=2)
    return total / total.sum(dim=1, keepdim=True).clamp_min(1e-12)


def pointing_hits(cam: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: the map's maximum cell (t, v) lies inside the ground-truth mask (a map with no
    positive cell, or an empty mask, is a miss): the metrics' pointing game with ``empty="miss"``."""
    return localization.pointing_hits(cam, truth, empty="miss").bool()


def energy_share(cam: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """``(N,)`` share of the positive map's mass inside the ground-truth mask (0 for a map with no
    positive cell): the metrics' energy pointing game with ``empty="miss"``, as a fraction."""
    return localization.energy_share(cam, truth, empty="miss")


def occlude_joints(x: torch.Tensor, joints: Iterable[int] | torch.Tensor) -> torch.Tensor:
    """Zero the given joints in every frame (``joints``: a list, or a bool ``(N, V)`` per sample)."""
    out = x.clone()
    if isinstance(joints, torch.Tensor):
        out *= skeleton_layout().broadcast((~joints.bool()).to(x.dtype), "NV")
    else:
        out[:, :, :, list(joints)] = 0
    return out


def occlude_frames(x: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Zero ``count`` random frames of every sample (chosen per sample)."""
    n, _, t, _, _ = x.shape
    order = torch.rand(n, t, generator=generator).argsort(dim=1)[:, :count]
    keep = torch.ones(n, t, dtype=x.dtype).scatter_(1, order, 0.0)
    return x * skeleton_layout().broadcast(keep, "NT")


def clip_scores(model: Any, x: torch.Tensor) -> torch.Tensor:
    """``(N, classes)`` softmax scores; for ``(N, K, C, T, V, M)`` windows, the mean over the K windows."""
    if x.ndim == 6:
        n, k = x.shape[:2]
        return model(x.flatten(0, 1)).softmax(dim=1).view(n, k, -1).mean(dim=1)
    return model(x).softmax(dim=1)


def corrupt_windows(corrupt: Any, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Apply a ``corrupt(x, y, generator)`` made for ``(N, C, T, V, M)`` to every window of a 6-D batch."""
    if x.ndim == 6:
        n, k = x.shape[:2]
        return corrupt(x.flatten(0, 1), y.repeat_interleave(k), generator).view(x.shape)
    return corrupt(x, y, generator)


def _batches(dataset: Any, batch_size: int) -> Iterable[dict[str, torch.Tensor]]:
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def occlusion_conditions(dataset: Any, frames_hidden: int) -> dict[str, Any]:
    """Named input corruptions: clean, each body-part set, the class's own cues (generated data), frames."""
    conditions: dict[str, Any] = {"clean": lambda x, y, g: x}
    joint_count = dataset.sample_shape[2]
    if joint_count == 25:  # the body-part sets are NTU-25 joint indices
        for part, joints in NTU25_PARTS.items():
            conditions[part] = (lambda js: lambda x, y, g: occlude_joints(x, js))(joints)
    else:
        warnings.warn(f"body-part occlusions are defined for the NTU-25 skeleton; this data has {joint_count} "
                      f"joints, so only cue and frame occlusions are evaluated", RuntimeWarning, stacklevel=2)
    cue_joints = getattr(dataset, "cue_joints", None)
    if cue_joints is not None:
        for which, label in ((0, "class cue 1"), (1, "class cue 2")):
            table = torch.zeros(len(dataset.classes), dataset.sample_shape[2], dtype=torch.bool)
            for c in range(len(dataset.classes)):
                table[c, list(cue_joints(c)[which])] = True
            conditions[label] = (lambda tb: lambda x, y, g: occlude_joints(x, tb[y]))(table)
    conditions[f"{frames_hidden} random frames"] = lambda x, y, g: occlude_frames(x, frames_hidden, g)
    return conditions


def evaluate(model: Any, dataset: Any, batch_size: int = 64, frames_hidden: int | None = None,
             seed: int = 0, progress: bool = True, conditions: dict[str, Any] | None = None) -> dict[str, float]:
    """Accuracy (clean and under each occlusion) and, with ground-truth masks, the joint pointing
    game and energy share of the CAM of the true class (persons averaged, upsampled in time).

    ``conditions``: ``{name: corrupt(x, y, generator)}`` with a ``"clean"`` entry (default: camkit's
    :func:`occlusion_conditions`; ``protocols.ragcn_conditions`` gives RA-GCN's)."""
    from tqdm import tqdm

    import camkit

    if conditions is None:
        frames_hidden = frames_hidden if frames_hidden is not None else dataset.sample_shape[1] // 3
        conditions = occlusion_conditions(dataset, frames_hidden)
    correct = {name: 0 for name in conditions}
    hits, energy, counted = 0.0, 0.0, 0
    generator = torch.Generator().manual_seed(seed)
    from camkit.capture import evaluation_mode

    with evaluation_mode(model):  # restores each submodule's own train/eval flag
        for batch in tqdm(_batches(dataset, batch_size), desc="evaluate", disable=not progress, leave=False):
            x, y = batch["input"], batch["label"]
            with torch.no_grad():
                for name, corrupt in conditions.items():
                    scores = clip_scores(model, corrupt_windows(corrupt, x, y, generator))
                    correct[name] += int((scores.argmax(1) == y).sum())
            if "mask" in batch:
                result = camkit.explain(model, x, targets=y, reduce="M", normalize=False)
                hits += float(pointing_hits(result.maps, batch["mask"]).sum())
                energy += float(energy_share(result.maps, batch["mask"]).sum())
                counted += len(y)
    n = len(dataset)
    out = {f"accuracy {name}" if name != "clean" else "accuracy": correct[name] / n for name in conditions}
    if counted:
        out["pointing game"] = hits / counted
        out["energy share"] = energy / counted
    return out


def class_report(model: Any, dataset: Any, batch_size: int = 64, progress: bool = True) -> dict[str, Any]:
    """Clean ``top-1`` and ``top-5`` accuracy (top-k with k = min(5, classes)), ``per class`` accuracy
    (``None`` for a class without test clips) and the ``confusion`` matrix ``(true, predicted)`` counts."""
    from tqdm import tqdm

    from camkit.capture import evaluation_mode

    classes = len(dataset.classes)
    confusion = np.zeros((classes, classes), dtype=np.int64)
    top5 = 0
    with evaluation_mode(model), torch.no_grad():
        for batch in tqdm(_batches(dataset, batch_size), desc="classes", disable=not progress, leave=False):
            scores = clip_scores(model, batch["input"])
            y = batch["label"]
            top5 += int((scores.topk(min(5, classes), dim=1).indices == y[:, None]).any(dim=1).sum())
            np.add.at(confusion, (y.numpy(), scores.argmax(dim=1).numpy()), 1)
    totals = confusion.sum(axis=1)
    n = max(int(totals.sum()), 1)
    return {"top-1": float(np.trace(confusion)) / n, "top-5": top5 / n,
            "per class": [float(confusion[c, c] / totals[c]) if totals[c] else None for c in range(classes)],
            "confusion": confusion}


def summarise_runs(
    runs: Mapping[str, list[Mapping[str, float]]],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """``(mean, std)`` per label over its runs (sample std, ddof=1; empty for a single run)."""
    means, spreads = {}, {}
    for label, group in runs.items():
        metrics = list(group[0])
        values = {m: np.array([run[m] for run in group], dtype=float) for m in metrics}
        means[label] = {m: float(v.mean()) for m, v in values.items()}
        spreads[label] = {m: float(v.std(ddof=1)) for m, v in values.items()} if len(group) > 1 else {}
    return means, spreads


def markdown_table(results: Mapping[str, Mapping[str, float]],
                   spread: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Rows = metrics, one column per model (values in %; ``mean ± std`` where ``spread`` has the metric)."""
    models = list(results)
    metrics = list(next(iter(results.values())))
    spread = spread or {}

    def cell(model: str, metric: str) -> str:
        std = spread.get(model, {}).get(metric)
        return f"{100 * results[model][metric]:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")

    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(cell(m, metric) for m in models) + " |")
    return "\n".join(lines) + "\n"


def plot_results(results: Mapping[str, Mapping[str, float]], path: str,
                 spread: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Grouped bars of accuracy under every condition, one colour per model (error bars: ``spread``)."""
    from camkit.display import figure_and_axes

    models = list(results)
    conditions = [k for k in next(iter(results.values())) if k.startswith("accuracy")]
    width = 0.8 / len(models)
    fig, ax = figure_and_axes(figsize=(1.0 * len(conditions) + 2, 3.2))
    for i, model in enumerate(models):
        errors = [100 * (spread or {}).get(model, {}).get(c, 0.0) for c in conditions]
        ax.bar(np.arange(len(conditions)) + i * width, [100 * results[model][c] for c in conditions], width,
               label=model, yerr=errors if any(errors) else None, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks(np.arange(len(conditions)) + width * (len(models) - 1) / 2,
                  [c.replace("accuracy", "").strip() or "clean" for c in conditions], rotation=30, ha="right",
                  fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_confusion(confusion: np.ndarray, classes: list[str], path: str, title: str = "") -> None:
    """The confusion matrix as a picture: rows true classes, columns predicted, each row as shares."""
    from camkit.display import figure_and_axes

    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = min(2 + 0.3 * len(classes), 16)
    fig, ax = figure_and_axes(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:  # beyond that the names overlap; the axes still count classes
        ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=6)
        ax.set_yticks(range(len(classes)), classes, fontsize=6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)

