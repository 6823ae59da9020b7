"""Training an image classifier: seeded, with a progress bar, validation accuracy per epoch, a
skip-with-warning policy for unreadable pictures, a stop at the first non-finite loss, and a state at
the end of every epoch from which training resumes exactly."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

from camkit_plugins.image.datasets import SkipCorrupt, collate_skipping


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loader(dataset: Any, batch_size: int, shuffle: bool, seed: int, workers: int) -> Any:
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(SkipCorrupt(dataset), batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=workers, collate_fn=collate_skipping)


def evaluate_accuracy(model: Any, dataset: Any, batch_size: int = 256, workers: int = 0,
                      skipped: set[str] | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``dataset`` (unreadable files are skipped and added to ``skipped``;
    NaN when no file could be read). Each submodule keeps its own train/eval flag afterwards."""
    from camkit.evaluation import count_correct

    def readable() -> Any:
        for batch in _loader(dataset, batch_size, False, 0, workers):
            if skipped is not None:
                skipped.update(batch["skipped"])
            if "input" in batch:  # a batch of only unreadable files has none
                yield batch

    correct, total = count_correct(model, readable())
    return correct / total if total else float("nan")


def train_classifier(model: Any, train_set: Any, val_set: Any | None, epochs: int = 5, lr: float = 3e-3,
                     batch_size: int = 64, seed: int = 0, workers: int = 0, flip: bool = False, erase: int = 0,
                     log: Callable[[str], None] = print, desc: str = "train",
                     on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
                     resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """AdamW + one-cycle schedule, cross-entropy. Returns ``{"val_accuracy": [...], "skipped": [...],
    "loss": [...]}``; a bad picture is skipped with a warning naming it, and counted at the end.

    ``on_epoch_end(epoch, state)`` gets, after every epoch, the state (weights, optimizer, schedule,
    data order, RNG, history) from which ``resume=state`` continues with the next epoch and ends with
    the weights of an uninterrupted run. The first non-finite loss stops training with
    ``camkit.validation.NonFiniteError``. ``erase=S``: half the training pictures get one random SxS
    square set to 0 (the normalised mean; hide-and-seek / cutout), so the classifier cannot rely on one
    part of the object alone and the class maps cover more of it."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from camkit.validation import require_finite

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    seed_everything(seed)
    loader = _loader(train_set, batch_size, True, seed, workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * max(1, len(loader)))
    skipped: set[str] = set()
    history: dict[str, Any] = {"val_accuracy": [], "loss": []}
    done = 0 if resume is None else restore_training(resume, model, optimizer, schedule, loader, history, skipped)
    for epoch in range(done + 1, epochs + 1):
        model.train()
        running, seen = 0.0, 0
        with tqdm(loader, desc=f"{desc} epoch {epoch}/{epochs}", unit="batch", leave=False) as bar:
            for step, batch in enumerate(bar, 1):
                skipped.update(batch["skipped"])
                if "input" in batch:
                    inputs, labels = batch["input"], batch["label"]
                    if flip:  # horizontal flips: the classes here are mirror-invariant
                        mirror = torch.rand(len(inputs)) < 0.5
                        inputs = torch.where(mirror[:, None, None, None], inputs.flip(-1), inputs)
                    if erase:
                        inputs = erase_squares(inputs, erase)
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(inputs), labels)
                    require_finite(loss.detach(), f"the training loss (epoch {epoch}, batch {step})")
                    loss.backward()
                    optimizer.step()
                    running += float(loss.detach()) * len(labels)
                    seen += len(labels)
                    bar.set_postfix(loss=f"{running / max(seen, 1):.3f}")
                schedule.step()
        history["loss"].append(running / max(seen, 1))
        message = f"{desc} epoch {epoch}/{epochs}: loss {history['loss'][-1]:.4f}"
        if val_set is not None and len(val_set):
            history["val_accuracy"].append(evaluate_accuracy(model, val_set, workers=workers, skipped=skipped))
            message += f", val accuracy {100 * history['val_accuracy'][-1]:.2f}%"
        log(message)
        if on_epoch_end is not None:
            on_epoch_end(epoch, training_state(epoch, model, optimizer, schedule, loader, history, skipped))
    model.eval()
    history["skipped"] = sorted(skipped)
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) skipped: {', '.join(history['skipped'])}", stacklevel=2)
    return history


def erase_squares(inputs: Any, size: int, fraction: float = 0.5) -> Any:
    """A copy of ``inputs`` (N, C, H, W) where a random ``fraction`` of the pictures has one ``size`` x
    ``size`` square, placed uniformly inside the picture, set to 0. Draws from torch's global RNG."""
    import torch

    height, width = inputs.shape[-2:]
    if not 0 < size <= min(height, width):
        raise ValueError(f"erase: the square ({size} px) must fit in the {height}x{width} pictures")
    count = len(inputs)
    chosen = torch.rand(count) < fraction
    top = torch.randint(0, height - size + 1, (count,))
    left = torch.randint(0, width - size + 1, (count,))
    rows = torch.arange(height)[None, :, None] - top[:, None, None]
    cols = torch.arange(width)[None, None, :] - left[:, None, None]
    inside = (rows >= 0) & (rows < size) & (cols >= 0) & (cols < size) & chosen[:, None, None]
    return inputs.masked_fill(inside[:, None].to(inputs.device), 0.0)


def training_state(epoch: int, model: Any, optimizer: Any, schedule: Any, loader: Any, history: Mapping[str, Any],
                   skipped: set[str]) -> dict[str, Any]:
    """What `restore_training` needs to continue after ``epoch`` (``torch.load(weights_only=True)`` reads it)."""
    from camkit.checkpoint import rng_state

    return {"epoch": epoch, "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "data_order": loader.generator.get_state(), "rng": rng_state(),
            "history": {k: list(v) for k, v in history.items()}, "skipped": sorted(skipped)}


def restore_training(state: Mapping[str, Any], model: Any, optimizer: Any, schedule: Any, loader: Any,
                     history: dict[str, Any], skipped: set[str]) -> int:
    """Put a `training_state` back (``history`` and ``skipped`` are filled in place); returns its epoch."""
    from camkit.checkpoint import set_rng_state

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    loader.generator.set_state(state["data_order"])  # the shuffles of the epochs still to come
    set_rng_state(state["rng"])  # flips and any other draw
    history.update({k: list(v) for k, v in state["history"].items()})
    skipped.update(state["skipped"])
    return int(state["epoch"])
