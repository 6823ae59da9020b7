"""Checkpoints: a directory with ``model.pt`` (a state dict) and ``config.json``.

``config.json`` holds at least ``{"model": registered model name, "model_options": {...},
"classes": [...]}`` plus whatever a domain needs (input size, normalisation, layout). Loading
uses ``torch.load(..., weights_only=True)``: a checkpoint cannot run code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"


def save_checkpoint(directory: str | Path, model: Any, config: Mapping[str, Any]) -> Path:
    """Write the model's state dict and its config; returns the directory."""
    import torch

    missing = [key for key in ("model", "classes") if key not in config]
    if missing:
        raise ValueError(f"checkpoint config needs {', '.join(missing)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, directory / WEIGHTS_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    return directory


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
