"""explain_files: bounded pending writes, and every write error named."""

import weakref

import pytest
import torch
from torchvision.io import write_png

import camkit
import camkit_plugins.image.explain_files as explain_module
from camkit_plugins.image.explain_files import OverlayWriteError, explain_files

pytestmark = pytest.mark.filterwarnings("ignore::camkit.ConstantMapWarning")  # random pictures, untrained model


def _setup(tmp_path, count):
    torch.manual_seed(0)
    folder = tmp_path / "in"
    folder.mkdir()
    files = []
    for i in range(count):
        path = folder / f"p{i:02d}.png"
        write_png(torch.randint(0, 255, (3, 12, 12), dtype=torch.uint8), str(path))
        files.append(path)
    model = camkit.lookup("models", "mnist-gap")(num_classes=2, in_channels=3).eval()
    config = {"classes": ["a", "b"], "input_size": 12, "mean": [0.5] * 3, "std": [0.5] * 3, "in_channels": 3}
    return model, config, files


def test_pending_writes_are_collected_as_they_finish(tmp_path, monkeypatch):
    model, config, files = _setup(tmp_path, 24)
    alive, most = [], [0]

    class Tracking(explain_module.ThreadPoolExecutor):
        def submit(self, *args, **kwargs):
            future = super().submit(*args, **kwargs)
            alive.append(weakref.ref(future))
            most[0] = max(most[0], sum(ref() is not None for ref in alive))
            return future

    monkeypatch.setattr(explain_module, "ThreadPoolExecutor", Tracking)
    monkeypatch.setattr(explain_module, "MAX_PENDING_WRITES", 3)
    report = explain_files(model, config, files, tmp_path / "out", batch_size=4, workers=0, grid=False,
                           save_maps=True)
    assert len(report.written) == 24 and len(alive) == 48
    assert all((tmp_path / "out" / f"p{i:02d}_maps.npy").is_file() for i in range(24))
    assert most[0] <= 4  # the limit plus the one just submitted, not all 48


def test_every_write_error_is_named_and_the_others_are_written(tmp_path, monkeypatch):
    import camkit_plugins.image.render as render

    model, config, files = _setup(tmp_path, 6)
    real = render.write_overlay

    def flaky(path, *args, **kwargs):
        if path.name.startswith(("p01", "p04")):
            raise OSError(f"disk full writing {path.name}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(render, "write_overlay", flaky)
    monkeypatch.setattr(explain_module, "MAX_PENDING_WRITES", 1)
    with pytest.raises(OverlayWriteError) as caught:
        explain_files(model, config, files, tmp_path / "out", batch_size=2, workers=0, grid=False)
    error = caught.value
    assert sorted(path.name[:3] for path, _ in error.failures) == ["p01", "p04"]
    assert "p01_pred_" in str(error) and "p04_pred_" in str(error) and "disk full" in str(error)
    assert isinstance(error.__cause__, OSError)
    assert len(error.report.written) == 4 and all(path.is_file() for path in error.report.written)
