"""camkit.evaluation.count_correct and the two accuracy loops built on it, against hand counts."""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn as nn

from camkit.evaluation import count_correct
from camkit_plugins.image.datasets import CorruptImageError, TensorImageDataset
from camkit_plugins.image.train import evaluate_accuracy
from camkit_plugins.skeleton.commands import _accuracy

# two "pixels" per sample; the model predicts the class of the larger one
PIXELS = torch.tensor([[3.0, 1.0], [0.0, 2.0], [5.0, 4.0], [1.0, 9.0], [2.0, 0.5], [0.1, 0.2], [7.0, 6.0]])
LABELS = torch.tensor([0, 1, 1, 1, 1, 0, 0])
# predictions:          0  1  0  1  0  1  0  -> right at samples 0, 1, 3, 6: 4 of 7


class LargerPixel(nn.Module):
    """Logits = the flattened input; checks it runs in eval mode without autograd."""

    def __init__(self):
        super().__init__()
        self.dropout = nn.Dropout(0.5)  # would scramble the logits if left in training mode

    def forward(self, x):
        assert not torch.is_grad_enabled() and not self.training
        return self.dropout(x.flatten(1))


def test_count_correct_matches_a_hand_count_and_restores_training_mode():
    model = LargerPixel().train()
    batches = [{"input": PIXELS[:3], "label": LABELS[:3]}, {"input": PIXELS[3:], "label": LABELS[3:]}]
    assert count_correct(model, batches) == (4, 7)
    assert count_correct(model, batches, device="cpu") == (4, 7)
    assert count_correct(model, []) == (0, 0)
    assert model.training and model.dropout.training


class Unreadable(TensorImageDataset):
    """The samples in ``bad`` are unreadable files."""

    def __init__(self, bad, *args):
        super().__init__(*args)
        self.bad = bad

    def __getitem__(self, index):
        if index in self.bad:
            raise CorruptImageError(f"bad{index}.png", "truncated")
        return super().__getitem__(index)


@pytest.mark.parametrize("bad, expected", [
    (set(), 4 / 7),
    ({2}, 4 / 6),  # sample 2 was a miss: 4 right of the 6 read
    ({3, 4, 5}, 3 / 4),  # the whole second batch unreadable: 0, 1, 6 right of 0, 1, 2, 6
    (set(range(7)), float("nan")),  # nothing read
])
def test_image_accuracy_counts_only_readable_images(bad, expected):
    data = Unreadable(bad, PIXELS.view(7, 1, 1, 2), LABELS, ["a", "b"], [0.0], [1.0])
    skipped = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SkipCorrupt warns once per unreadable file
        accuracy = evaluate_accuracy(LargerPixel(), data, batch_size=3, skipped=skipped)
    assert accuracy == pytest.approx(expected, nan_ok=True)
    assert skipped == {f"bad{i}.png" for i in bad}


def test_skeleton_accuracy_matches_a_hand_count():
    data = [{"input": pixels.view(1, 1, 2, 1), "label": int(label)} for pixels, label in zip(PIXELS, LABELS)]
    assert _accuracy(LargerPixel(), data, "cpu", batch_size=3) == pytest.approx(4 / 7)
    assert _accuracy(LargerPixel(), [], "cpu") == 0.0


def test_importing_camkit_evaluation_does_not_import_torch():
    code = "import sys, camkit.evaluation; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
