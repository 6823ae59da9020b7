"""Overlays: the JET table, the 50/50 blend (torch, on the maps' device), labelled files and grids."""

import cv2
import numpy as np
import pytest
import torch

import camkit
from camkit_plugins.image.render import (
    jet_lut,
    label_text,
    overlay,
    overlay_file_name,
    overlay_torch,
    save_grid,
    write_overlay,
)


def test_jet_table_matches_the_classic_ramps():
    lut = jet_lut()
    assert lut.shape == (256, 3)
    assert torch.allclose(lut[0], torch.tensor([0.0, 0.0, 127.5]))  # dark blue
    assert torch.allclose(lut[255], torch.tensor([127.5, 0.0, 0.0]))  # dark red
    assert lut[128, 1] > 250 and lut[128, 0] < 140 and lut[128, 2] < 140  # green-ish in the middle
    # OpenCV's COLORMAP_JET (what most CAM tools blend with) agrees within rounding
    reference = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1]
    assert np.abs(lut.numpy() - reference.astype(float)).max() <= 0.5 + 1e-3


def test_overlay_is_the_half_and_half_blend():
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    maps = torch.rand(2, 5, 7)
    out = overlay_torch(images, maps, 0.5)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    index = (maps * 255).round().long()
    expected = 0.5 * jet_lut()[index].permute(0, 3, 1, 2) + 0.5 * images.float()
    assert (out.float() - expected).abs().max() <= 0.5 + 1e-4
    assert torch.equal(overlay_torch(images, maps, 0.0), images)
    assert torch.equal(overlay(images, maps, 0.5), out)  # default kernel has no fused overlay


def test_overlay_prefers_a_kernels_fused_version():
    class Fused(camkit.TorchKernel):
        def overlay(self, images, maps, alpha):
            return torch.full_like(images, 7)

    class Plugin:
        @camkit.hookimpl(tryfirst=True)
        def camkit_select_kernel(self, device_type, dtype):
            return Fused()

    images = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    with camkit.temporary_plugin(Plugin()):
        assert (overlay(images, torch.zeros(1, 2, 2), 0.5) == 7).all()


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not fit images"):
        overlay_torch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        overlay_torch(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), torch.zeros(1, 4, 4))


def test_written_overlay_has_the_input_size_and_heat_where_the_map_is(tmp_path):
    grey = torch.full((1, 3, 60, 80), 128, dtype=torch.uint8)
    maps = torch.zeros(1, 60, 80)
    maps[0, 30:60, 40:80] = 1.0  # hot bottom-right quadrant
    blended = overlay(grey, maps, 0.5)[0].permute(1, 2, 0).numpy()
    path = write_overlay(tmp_path / overlay_file_name("photo", "dog", 0.97312), blended, label_text("dog", 0.97312))
    assert path.name == "photo_pred_dog_97.31pct.jpg" and path.is_file()
    written = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(float)
    assert written.shape == (60, 80, 3)
    hot, cold = written[40:60, 55:80], written[40:60, 5:30]
    # JET(1) = dark red (127.5, 0, 0) half over grey 128 -> (128, 64, 64); JET(0) -> (64, 64, 128)
    assert np.allclose(hot.mean(axis=(0, 1)), [128, 64, 64], atol=6)
    assert np.allclose(cold.mean(axis=(0, 1)), [64, 64, 128], atol=6)
    band = written[:10, :60]  # "dog 97.31%": white text on a black band, top-left, over the grey-blue blend
    assert band.min() < 30 and band.max() > 200


def test_label_text_and_safe_names():
    assert label_text("dog", 0.97312) == "dog 97.31%"
    assert overlay_file_name("a", "hot dog/bun") == "a_pred_hot_dog_bun.jpg"
    assert overlay_file_name("a", "hot dog/bun", 0.5) == "a_pred_hot_dog_bun_50.00pct.jpg"
    assert overlay_file_name("a", "cat", 1.0, ".png") == "a_pred_cat_100.00pct.png"


def test_grid_figure_is_written(tmp_path):
    images = torch.randint(0, 256, (4, 1, 12, 12), dtype=torch.uint8)
    path = save_grid(tmp_path / "grid.png", images, torch.rand(4, 12, 12), ["a", "b", "c", "d"], ncols=3)
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[0] > 100 and picture.shape[1] > 200
    with pytest.raises(ValueError, match="must match"):
        save_grid(tmp_path / "x.png", images, torch.rand(3, 12, 12), ["a"] * 4)


def test_every_kernel_follows_the_protocol_and_overlays_alike():
    from camkit.kernels import Kernel, NumpyKernel, TorchKernel
    from camkit_plugins.gpu.kernel import CudaKernel

    kernels = [NumpyKernel(), TorchKernel(), CudaKernel(use_triton=False)]
    assert all(isinstance(kernel, Kernel) for kernel in kernels)
    images = torch.randint(0, 256, (2, 3, 5, 6), dtype=torch.uint8)
    maps = torch.rand(2, 5, 6)
    reference = kernels[1].overlay(images, maps, 0.3)
    assert np.array_equal(kernels[0].overlay(images.numpy(), maps.numpy(), 0.3), reference.numpy())
    assert torch.equal(kernels[2].overlay(images, maps, 0.3), reference)
