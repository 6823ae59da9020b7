"""Checkpoints: a directory with ``model.pt`` (a state dict) and ``config.json``.

``config.json`` holds at least ``{"model": registered model name, "model_options": {...},
"classes": [...]}`` plus whatever a domain needs (input size, normalisation, layout). Loading
uses ``torch.load(..., weights_only=True)``: a checkpoint cannot run code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from camkit.io import save_torch_atomic, write_json_atomic

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.pt"


def save_checkpoint(directory: str | Path, model: Any, config: Mapping[str, Any]) -> Path:
    """Write the model's state dict and its config; returns the directory."""
    import torch

    missing = [key for key in ("model", "classes") if key not in config]
    if missing:
        raise ValueError(f"checkpoint config needs {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    from camkit.validation import require_finite

    for name, tensor in state.items():
        if tensor.is_floating_point():
            require_finite(tensor, f"weight {name!r}")  # a diverged model is never saved
    save_torch_atomic(directory / WEIGHTS_FILE, state)
    write_json_atomic(directory / CONFIG_FILE, dict(config), sort_keys=True)
    return directory


def save_training_state(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write what ``--resume`` needs beside the weights (epoch, optimizer, schedule, RNG states, history)
    as ``training.pt``, atomically. Values must be tensors, numbers, strings, lists or dicts of them."""
    return save_torch_atomic(Path(directory) / TRAINING_FILE, dict(state))


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """The state written by :func:`save_training_state` (``weights_only=True``: no code runs)."""
    import torch

    path = Path(directory) / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: nothing to resume (no {TRAINING_FILE}; was it written by "
                                "a camkit version that saves a checkpoint every epoch?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load the training state: {exc}") from exc


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch CPU generator states, in a form ``torch.load(weights_only=True)`` accepts."""
    import random

    import numpy as np
    import torch

    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))


def read_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a camkit checkpoint (no {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: unreadable checkpoint config: {exc}") from exc


def load_checkpoint(directory: str | Path, map_location: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(model, config)``: the registered model rebuilt from the config, weights loaded, in eval mode."""
    import torch

    from camkit.plugin_manager import lookup

    config = read_config(directory)
    builder = lookup("models", config["model"])
    model = builder(num_classes=len(config["classes"]), **config.get("model_options", {}))
    path = Path(directory) / WEIGHTS_FILE
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)  # tensors only: no code runs
    except Exception as exc:
        raise ValueError(f"{path}: cannot load checkpoint weights: {exc}") from exc
    model.load_state_dict(state)
    return model.eval(), config
