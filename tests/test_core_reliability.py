"""Nothing silent in the core: half-precision overflow, non-finite logits and maps, a detached layer,
one-sample head checks, two threads on one model, Score-CAM in train mode."""

import threading

import pytest
import torch
import torch.nn as nn

import camkit
from camkit.methods import HeadMismatchWarning
from camkit.validation import NonFiniteError
from conftest import tiny_gap_net as gap_net


def test_float16_maps_that_overflow_are_summed_in_float32():
    features = torch.full((1, 256, 2, 2), 3000.0).half()
    features[0, :, 0, 0] = 1000.0
    weights = torch.full((1, 256), 10.0).half()
    with pytest.raises(ValueError, match="overflow torch.float16"):
        camkit.class_activation_map(features, "NCHW", channel_weights=weights)
    exact = camkit.class_activation_map(features, "NCHW", channel_weights=weights, dtype=torch.float32)
    torch.testing.assert_close(exact, camkit.class_activation_map(features.float(), "NCHW",
                                                                  channel_weights=weights.float()))

    class TwoHotSpots(nn.Module):
        """Channels 0-127 hot at one site, 128-255 at another, weights +10 / -10: finite logits, while
        the map reaches 128 * 3000 * 10 at the hot sites (over float16's 65504)."""

        def __init__(self) -> None:
            super().__init__()
            pattern = torch.zeros(256, 4, 4)
            pattern[:128, 0, 0] = 3000.0
            pattern[128:, 3, 3] = 3000.0
            self.register_buffer("pattern", pattern)
            self.body = nn.Identity()
            self.fc = nn.Linear(256, 2)
            with torch.no_grad():
                self.fc.weight.copy_(torch.cat([torch.full((128,), 10.0), torch.full((128,), -10.0)]).expand(2, -1))
                self.fc.bias.zero_()

        def forward(self, x):
            features = self.body(self.pattern.to(x.dtype) * (1 + x.mean((1, 2, 3)))[:, None, None, None])
            return self.fc(features.mean((2, 3)))

    x = torch.zeros(2, 3, 4, 4)
    half = camkit.explain(TwoHotSpots().half(), x.half(), "cam", targets=0)
    full = camkit.explain(TwoHotSpots(), x, "cam", targets=0)
    assert half.maps.dtype == torch.float16 and bool(half.maps.isfinite().all())
    torch.testing.assert_close(half.maps.float(), full.maps, atol=2e-3, rtol=0)
    assert float(full.maps[0, 0, 0]) == 1.0 and float(full.maps[0, 3, 3]) == 0.0


def test_non_finite_maps_and_logits_are_errors():
    maps = torch.rand(2, 4, 4)
    maps[0, 1, 1] = float("nan")
    with pytest.raises(NonFiniteError, match="maps to post-process contain NaN"):
        camkit.postprocess(maps, "NHW", layout="NCHW")
    with pytest.raises(NonFiniteError, match="class activation maps .* contain NaN"):
        camkit.class_activation_map(torch.rand(1, 2, 3, 3), "NCHW", channel_weights=torch.tensor([[1.0, float("nan")]]))
    x = torch.rand(2, 3, 6, 6)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="the input batch is not finite: 1 NaN"):
        camkit.explain(gap_net(), x, "gradcam")
    with pytest.raises(NonFiniteError, match="input 'scale' is not finite: 0 NaN and 1 infinite"):
        camkit.explain(gap_net(), {"input": x.nan_to_num(), "scale": torch.tensor([1.0, float("inf")])}, "gradcam")
    model = gap_net()
    with torch.no_grad():
        model[4].bias[1] = float("inf")
    for method in ("cam", "gradcam"):
        with pytest.raises(NonFiniteError, match="the model's logits is not finite: 0 NaN and 2 infinite"):
            camkit.explain(model, torch.rand(2, 3, 6, 6), method)


def test_a_layer_detached_before_the_head_is_a_clear_error():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.body(x).detach().mean((2, 3)))

    with pytest.raises(RuntimeError, match="do not depend on the features of 'body': the model detaches them"):
        camkit.explain(Detached().eval(), torch.rand(2, 3, 6, 6), "gradcam", layer="body")


def test_one_sample_is_enough_to_see_a_head_that_is_not_gap_then_linear():
    class NormHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 6, 3)
            self.norm = nn.LayerNorm(6)
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.norm(self.body(x).mean((2, 3))))

    with pytest.warns(HeadMismatchWarning, match="not global average pooling"):
        camkit.explain(NormHead().eval(), torch.rand(1, 3, 6, 6), "cam")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", HeadMismatchWarning)
        camkit.explain(gap_net(), torch.rand(1, 3, 6, 6), "cam")  # a true GAP + linear head: no warning


def test_two_threads_on_one_model_are_told_what_happened():
    model = gap_net()
    entered, release = threading.Event(), threading.Event()

    class Slow(nn.Module):
        def forward(self, x):
            entered.set()
            release.wait(10)
            return x

    model.insert(2, Slow())
    errors = []

    def explain_in_thread():
        camkit.explain(model, torch.rand(1, 3, 6, 6), "gradcam", layer="1")

    worker = threading.Thread(target=explain_in_thread)
    worker.start()
    try:
        assert entered.wait(10)
        try:
            camkit.explain(model, torch.rand(1, 3, 6, 6), "gradcam", layer="1")
        except RuntimeError as exc:
            errors.append(str(exc))
    finally:
        release.set()
        worker.join()
    assert errors and "another thread is explaining the same model" in errors[0]


def test_scorecam_refuses_train_mode_forwards():
    with pytest.raises(ValueError, match="scorecam runs the model on masked inputs.*BatchNorm"):
        camkit.Explainer(gap_net(), "scorecam", eval_mode=False)


def test_require_finite_names_the_tensor_and_counts_and_is_not_fooled_by_an_overflowing_sum():
    import numpy as np

    from camkit.validation import NonFiniteError, require_finite

    huge = torch.full((4,), 3e38)  # finite values whose float32 sum overflows to inf
    assert require_finite(huge, "x") is huge
    assert require_finite(torch.arange(5), "ids") is not None and require_finite(np.arange(3), "a") is not None
    bad = torch.tensor([1.0, float("nan"), float("inf"), -float("inf"), 2.0])
    for value, dtype in ((bad, torch.float32), (bad, torch.float16), (bad.to(torch.complex64), None)):
        tensor = value if dtype is None else value.to(dtype)
        with pytest.raises(NonFiniteError, match=r"^the batch is not finite: 1 NaN and 2 infinite values of 5$"):
            require_finite(tensor, "the batch")
    with pytest.raises(NonFiniteError, match="1 NaN and 2 infinite values of 5"):
        require_finite(bad.numpy(), "the batch")
