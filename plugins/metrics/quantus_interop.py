"""camkit methods as Quantus's ``explain_func`` (the other direction, Quantus metrics inside
``camkit bench``, lives beside this module).

    import quantus
    from camkit_plugins.metrics.quantus_interop import explain_func

    metric = quantus.MaxSensitivity(nr_samples=10)
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                    explain_func_kwargs={"method": "gradcam"})

This module imports no torch at import time."""

from __future__ import annotations

from typing import Any

# keywords Quantus passes along with the explain_func_kwargs that are data, not explanation options
QUANTUS_KEYWORDS = frozenset({"x_batch", "y_batch", "a_batch", "s_batch", "custom_batch", "channel_first",
                              "softmax", "model_predict_kwargs", "batch_size"})


def explain_func(model: Any, inputs: Any, targets: Any, method: str = "gradcam", device: Any = None,
                 **options: Any) -> Any:
    """Quantus's ``explain_func(model, inputs, targets, **kwargs) -> np.ndarray``: the maps of ``method``
    (any registered camkit method) for ``targets`` (one class id per sample, or one for all), shaped
    ``(N, *sites)`` as float32 numpy (Quantus adds the channel axis itself: ``(N, H, W)`` maps for
    ``(N, C, H, W)`` inputs).

    ``inputs``: numpy or torch in the model's layout; they go to ``device`` (Quantus passes its own
    ``device``), else to the model's device. Every other keyword is a ``camkit.explain`` option: ``layer``,
    ``input_layout``, ``normalize``, ``reduce``, ``method_options`` (the method's own options), ...
    camkit restores the model's train / eval flags and leaves its gradients as they were. Quantus's own data
    keywords, which some of its metrics forward to the explanation function (``s_batch``, ``custom_batch``,
    ``channel_first``, ...), are ignored."""
    import numpy as np
    import torch

    import camkit

    options = {key: value for key, value in options.items() if key not in QUANTUS_KEYWORDS}
    first = next(iter(model.parameters()), None)
    if device is None:
        device = first.device if first is not None else "cpu"
    dtype = first.dtype if first is not None and first.dtype.is_floating_point else torch.float32
    x = (inputs if torch.is_tensor(inputs) else torch.as_tensor(np.asarray(inputs))).to(device=device, dtype=dtype)
    t = (targets if torch.is_tensor(targets) else torch.as_tensor(np.asarray(targets))).long().reshape(-1)
    if t.numel() == 1 and x.shape[0] > 1:
        t = t.expand(x.shape[0])
    if t.numel() != x.shape[0]:
        raise ValueError(f"explain_func: {t.numel()} targets for {x.shape[0]} inputs")
    result = camkit.explain(model, x, method, targets=t.to(device), **options)
    return result.maps.detach().float().cpu().numpy()
