"""Training an image classifier: seeded, with a progress bar, validation accuracy per epoch, and a
skip-with-warning policy for unreadable pictures."""

from __future__ import annotations

import warnings
from typing import Any, Callable

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
                     batch_size: int = 64, seed: int = 0, workers: int = 0, flip: bool = False,
                     log: Callable[[str], None] = print, desc: str = "train") -> dict[str, Any]:
    """AdamW + one-cycle schedule, cross-entropy. Returns ``{"val_accuracy": [...], "skipped": [...],
    "loss": [...]}``; a bad picture is skipped with a warning naming it, and counted at the end."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    seed_everything(seed)
    loader = _loader(train_set, batch_size, True, seed, workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * max(1, len(loader)))
    skipped: set[str] = set()
    history: dict[str, Any] = {"val_accuracy": [], "loss": []}
    for epoch in range(1, epochs + 1):
        model.train()
        running, seen = 0.0, 0
        with tqdm(loader, desc=f"{desc} epoch {epoch}/{epochs}", unit="batch", leave=False) as bar:
            for batch in bar:
                skipped.update(batch["skipped"])
                if "input" in batch:
                    inputs, labels = batch["input"], batch["label"]
                    if flip:  # horizontal flips: the classes here are mirror-invariant
                        mirror = torch.rand(len(inputs)) < 0.5
                        inputs = torch.where(mirror[:, None, None, None], inputs.flip(-1), inputs)
                    optimizer.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(inputs), labels)
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
    model.eval()
    history["skipped"] = sorted(skipped)
    if skipped:
        warnings.warn(f"{len(skipped)} unreadable image(s) skipped: {', '.join(history['skipped'])}", stacklevel=2)
    return history
