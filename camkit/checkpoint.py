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


def check_free_for_training(out: str | Path, resume: str | Path | None = None, overwrite: bool = False) -> None:
    """Refuse to train into ``out`` when it already holds a checkpoint (``config.json``, ``model.pt`` or
    ``training.pt``): the first epoch's checkpoint would replace the model there, so a run killed in epoch 1
    would have destroyed it. Allowed when ``resume`` is ``out`` itself (continuing that run) or with
    ``overwrite``. A ``FileExistsError`` (the CLI's one-line error, status 2) says what to pass instead."""
    folder = Path(out)
    held = [name for name in (CONFIG_FILE, WEIGHTS_FILE, TRAINING_FILE) if (folder / name).exists()]
    if not held or overwrite:
        return
    if resume is not None and Path(resume).resolve() == folder.resolve():
        return
    raise FileExistsError(f"{folder} already holds a checkpoint ({', '.join(held)}): training would replace it "
                          f"from the first epoch on; pass --resume {folder} to continue that run, --overwrite to "
                          f"replace it, or another --out")


def save_checkpoint(directory: str | Path, model: Any, config: Mapping[str, Any]) -> Path:
    """Write the model's state dict and its config; returns the directory."""
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
    path = Path(directory) / TRAINING_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: nothing to resume (no {TRAINING_FILE}; was it written by "
                                "a camkit version that saves a checkpoint every epoch?)")
    state = load_tensors(path, "the training state")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: the training state is a {type(state).__name__}, not a dict")
    return state


def load_tensors(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers, no code runs. A file that
    is missing, cut short, not torch's, or holding objects is a one-line ``ValueError`` naming ``what``."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise ValueError(f"{path}: cannot load {what}: no such file") from exc
    except pickle.UnpicklingError as exc:  # torch's text advises weights_only=False: camkit never does that
        raise ValueError(f"{path}: cannot load {what}: not tensors that load without running code "
                         f"({_first_sentence(str(exc).split('WeightsUnpickler error:')[-1])})") from exc
    except Exception as exc:
        raise ValueError(f"{path}: cannot load {what}: {_first_sentence(str(exc)) or type(exc).__name__}") from exc


def _first_sentence(text: str) -> str:
    """``text``'s first sentence on one line (torch's load errors run to several paragraphs)."""
    import re

    paragraph = re.sub(r"\x1b\[[0-9;]*m", "", text).strip().split("\n\n")[0]
    flat = " ".join(paragraph.split())
    return flat.split(". ")[0].rstrip(".")


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch CPU generator states, in a form ``torch.load(weights_only=True)`` accepts."""
    import random

    import numpy as np
    import torch

    kind, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)
    keys = np.asarray(keys, dtype=np.int64)  # uint32 has no torch dtype
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys), position, has_gauss, gauss]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(tuple(state["python"][:1]) + (tuple(state["python"][1]),) + tuple(state["python"][2:]))
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint, checked: a JSON object naming the ``model`` (a string), its
    ``classes`` (a non-empty list) and, if present, ``model_options`` (an object)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a camkit checkpoint (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint config: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a checkpoint config is a JSON object, not {type(config).__name__}")
    problems = []
    if not isinstance(config.get("model"), str):
        problems.append('no "model" (the registered model name, e.g. "resnet18")' if "model" not in config
                        else f'"model" must be a model name, not {config["model"]!r}')
    classes = config.get("classes")
    if not isinstance(classes, list) or not classes:
        problems.append('no "classes" (the list of class names)' if "classes" not in config
                        else f'"classes" must be a non-empty list of names, not {classes!r}')
    if not isinstance(config.get("model_options", {}), dict):
        problems.append(f'"model_options" must be an object, not {config["model_options"]!r}')
    if problems:
        raise ValueError(f"{path}: not a camkit checkpoint config: {'; '.join(problems)}")
    return config


def load_checkpoint(directory: str | Path, map_location: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(model, config)``: the registered model rebuilt from the config, weights loaded, in eval mode.
    Weights that do not fit the config's model, or are not finite, are a one-line ``ValueError``."""
    import torch

    from camkit.plugin_manager import lookup
    from camkit.validation import require_finite

    config = read_config(directory)
    builder = lookup("models", config["model"])
    options = config.get("model_options", {})
    try:
        model = builder(num_classes=len(config["classes"]), **options)
    except TypeError as exc:  # an option the builder does not take
        raise ValueError(f"{Path(directory) / CONFIG_FILE}: model {config['model']!r} cannot be built with "
                         f"model_options {options}: {exc}") from exc
    path = Path(directory) / WEIGHTS_FILE
    state = load_tensors(path, "checkpoint weights", map_location)  # tensors only: no code runs
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict but {type(state).__name__}")
    mismatch = describe_state_mismatch(model.state_dict(), state)
    if mismatch:
        raise ValueError(f"{path}: the weights do not fit {CONFIG_FILE} (model {config['model']!r}, "
                         f"{len(config['classes'])} classes): {mismatch}; were the weights or the class list "
                         f"copied from another checkpoint or edited?")
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            require_finite(tensor, f"{path}: weight {name!r}")
    model.load_state_dict(state)
    return model.eval(), config


def describe_state_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any], shown: int = 3) -> str:
    """One line on how the state dict ``found`` differs from the model's ``expected`` one (missing and
    unexpected names, shapes that differ), or "" when it fits."""
    missing = [name for name in expected if name not in found]
    unexpected = [name for name in found if name not in expected]
    shapes = [f"{name} {tuple(found[name].shape)} where the model has {tuple(tensor.shape)}"
              for name, tensor in expected.items()
              if name in found and hasattr(found[name], "shape") and tuple(found[name].shape) != tuple(tensor.shape)]

    def some(names: list[str]) -> str:
        return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")

    parts = []
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({some(shapes)})")
    if missing:
        parts.append(f"{len(missing)} missing ({some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({some(unexpected)})")
    return "; ".join(parts)
