"""The gpu plugin: kernel selection, the overlay against matplotlib's jet, the Triton kernels through
Triton's CPU interpreter, forward acceleration, and CPU/GPU parity (marked gpu)."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import camkit
from camkit.kernels import ConstantMapWarning, NumpyKernel, TorchKernel, select_kernel
from camkit.kernels import jet_table as jet_lut
from camkit_plugins import gpu as gpu_plugin
from camkit_plugins.gpu.accelerate import accelerate, autocast_dtype
from camkit_plugins.gpu.kernel import CudaKernel

jet_overlay_torch = TorchKernel().overlay


def tiny_cnn(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, classes),
    ).eval()


# ----------------------------------------------------------------------------------- selection


def test_plugin_declines_everything_but_cuda():
    assert gpu_plugin.camkit_select_kernel(device_type="cpu", dtype=torch.float32) is None
    assert gpu_plugin.camkit_select_kernel(device_type="mps", dtype=torch.float16) is None
    kernel = gpu_plugin.camkit_select_kernel(device_type="cuda", dtype=torch.float32)
    assert isinstance(kernel, CudaKernel) and isinstance(kernel, TorchKernel)
    # CPU tensors still get the core kernels
    assert type(select_kernel(torch.zeros(2, 3))) is TorchKernel
    assert type(select_kernel(np.zeros((2, 3)))) is NumpyKernel


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, camkit_plugins.gpu; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_triton_request_without_triton_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "camkit_plugins.gpu.triton_kernels", None)  # import fails
    with pytest.raises(RuntimeError, match="triton cannot be imported"):
        CudaKernel(use_triton=True)


# ----------------------------------------------------------------------------------- core kernel numbers


def test_normalize_matches_the_reference_formula_and_flags_constant_maps():
    maps = torch.randn(4, 2, 9, 11)
    maps[1, 0] = 3.0
    # a constant map resampled keeps ulp-sized ripples: still constant
    maps[2, 1] = TorchKernel().resample(torch.full((1, 1, 3, 3), 0.7), {2: 9, 3: 11})[0, 0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = TorchKernel().normalize(maps, 2)
        out_np = NumpyKernel().normalize(maps.numpy(), 2)
    assert sum(issubclass(w.category, ConstantMapWarning) for w in caught) == 2
    flat = maps.flatten(2)
    expected = (flat - flat.amin(-1, keepdim=True)) / (flat.amax(-1, keepdim=True) - flat.amin(-1, keepdim=True))
    expected[1, 0] = 0
    expected[2, 1] = 0
    assert torch.equal(out.flatten(2), expected)
    np.testing.assert_allclose(out_np, out.numpy(), atol=1e-6)


def test_resample_normalize_is_the_composition():
    kernel = TorchKernel()
    maps = torch.randn(3, 2, 7, 7)
    fused = kernel.resample_normalize(maps, {2: 30, 3: 20}, 2, relu=True)
    assert torch.equal(fused, kernel.normalize(kernel.resample(maps.clamp_min(0), {2: 30, 3: 20}), 2))


# ----------------------------------------------------------------------------------- overlay


def test_jet_table_matches_opencv():
    import cv2

    reference = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_JET)[:, 0, ::-1] / 255.0
    np.testing.assert_allclose(jet_lut(), reference, atol=0.5 / 255 + 1e-6)


def test_overlay_matches_the_jet_table_at_chosen_points():
    values = torch.tensor([0.0, 0.1, 0.2, 0.35, 0.5, 0.66, 0.77, 0.9, 0.999, 1.0])
    maps = values.view(1, 2, 5)
    images = torch.arange(30, dtype=torch.uint8).mul(8).view(1, 3, 2, 5)
    alpha = 0.4
    out = CudaKernel(use_triton=False).overlay(images, maps, alpha)
    colours = jet_lut()[np.round(values.numpy() * 255).astype(int)]  # (10, 3)
    expected = np.floor((1 - alpha) * images.view(3, 10).numpy().T + alpha * 255 * colours + 0.5)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    np.testing.assert_array_equal(out.view(3, 10).numpy().T, expected.astype(np.uint8))
    # value 0 is dark blue (0, 0, 0.5), value 1 dark red (0.5, 0, 0)
    assert out[0, :, 0, 0].tolist() == [int(np.floor(0.6 * v + 0.5 + 0.4 * 255 * c))
                                       for v, c in zip(images[0, :, 0, 0].tolist(), (0, 0, 0.5))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_overlay_accepts_half_precision_maps(dtype):
    images = torch.randint(0, 256, (2, 3, 6, 7), dtype=torch.uint8)
    maps = torch.rand(2, 6, 7)
    ref = jet_overlay_torch(images, maps, 0.5)
    out = jet_overlay_torch(images, maps.to(dtype), 0.5)
    # rounding the map to half precision may move it to the neighbouring colour bin
    assert (out.int() - ref.int()).abs().max() <= 3


def test_overlay_rejects_bad_input():
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        jet_overlay_torch(images, torch.full((2, 4, 4), 1.5), 0.5)
    with pytest.raises(ValueError, match="NaN"):
        jet_overlay_torch(images, torch.full((2, 4, 4), float("nan")), 0.5)
    with pytest.raises(ValueError, match="do not fit images"):
        jet_overlay_torch(images, torch.zeros(2, 4, 5), 0.5)
    with pytest.raises(ValueError, match="uint8"):
        jet_overlay_torch(images.float(), torch.zeros(2, 4, 4), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        jet_overlay_torch(images, torch.zeros(2, 4, 4), 1.5)


# ----------------------------------------------------------------------------------- Triton on the CPU

INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, warnings
    import torch
    from camkit.kernels import TorchKernel
    from camkit_plugins.gpu.kernel import CudaKernel

    torch.manual_seed(0)
    ref, tri = TorchKernel(), CudaKernel(use_triton=True)
    out = {}
    maps = torch.randn(3, 2, 7, 5)
    maps[0, 1] = 0.25
    long_maps = torch.randn(3, 2500)  # 3 blocks of 1024, the last one partial
    long_maps[1] = -1.5
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        m = maps.to(dtype)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = ref.normalize(m, 2)
            b = tri.normalize(m, 2)
            c = ref.resample_normalize(m, {2: 23, 3: 31}, 2, relu=True)
            d = tri.resample_normalize(m, {2: 23, 3: 31}, 2, relu=True)
            e = tri.resample_normalize(m[:, :, :, :4], {2: 3, 3: 2}, 2, relu=False)  # downsampling
            f = ref.resample_normalize(m[:, :, :, :4], {2: 3, 3: 2}, 2, relu=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # rows longer than one block (1024) and not a multiple of it: the loops' later blocks and masks
            g = tri.resample_normalize(m, {2: 50, 3: 45}, 2, relu=True)
            h = ref.resample_normalize(m, {2: 50, 3: 45}, 2, relu=True)
            i = tri.normalize(long_maps.to(dtype), 1)
            j = ref.normalize(long_maps.to(dtype), 1)
        name = str(dtype).split(".")[1]
        out[name] = {
            "normalize": float((a.float() - b.float()).abs().max()), "normalize_dtype": str(b.dtype),
            "fused": float((c.float() - d.float()).abs().max()), "fused_shape": list(d.shape),
            "fused_dtype": str(d.dtype), "down": float((e.float() - f.float()).abs().max()),
            "warnings": len(caught), "constant_zero": bool((d[0, 1] == 0).all()),
            "fused_long": float((g.float() - h.float()).abs().max()),
            "normalize_long": float((i.float() - j.float()).abs().max()),
            "long_constant_zero": bool((i[1] == 0).all()) and bool((g[0, 1] == 0).all()),
        }
    images = torch.randint(0, 256, (2, 3, 33, 40), dtype=torch.uint8)
    overlay_maps = torch.rand(2, 33, 40)
    overlay_maps[0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])
    o_ref = CudaKernel(use_triton=False).overlay(images, overlay_maps, 0.35)
    o_tri = tri.overlay(images, overlay_maps, 0.35)
    out["overlay"] = int((o_ref.int() - o_tri.int()).abs().max())
    # one block per image, images after the first: the flat grid's sample / block split
    small_images = torch.randint(0, 256, (3, 3, 5, 7), dtype=torch.uint8)
    small_maps = torch.rand(3, 5, 7)
    out["overlay_small"] = int((CudaKernel(use_triton=False).overlay(small_images, small_maps, 0.6).int()
                                - tri.overlay(small_images, small_maps, 0.6).int()).abs().max())
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def interpreter_results():
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1")  # must be set before triton is first imported
    proc = subprocess.run([sys.executable, "-c", INTERPRETER_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    if proc.returncode != 0 and "interpret" in proc.stderr.lower() and "not supported" in proc.stderr.lower():
        pytest.skip(f"Triton's interpreter does not run here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-6), ("float16", 2e-3), ("bfloat16", 1.6e-2)])
def test_triton_kernels_match_torch_through_the_interpreter(interpreter_results, dtype, tolerance):
    result = interpreter_results[dtype]
    assert result["normalize"] <= tolerance
    assert result["fused"] <= tolerance
    assert result["down"] <= tolerance
    assert result["fused_long"] <= tolerance and result["normalize_long"] <= tolerance
    assert result["long_constant_zero"]
    assert result["fused_shape"] == [3, 2, 23, 31]
    assert result["normalize_dtype"] == result["fused_dtype"] == f"torch.{dtype}"
    assert result["constant_zero"]
    assert result["warnings"] == 6  # the constant map, flagged by both paths in each of the three ops


def test_triton_overlay_matches_torch_through_the_interpreter(interpreter_results):
    assert interpreter_results["overlay"] <= 1  # fused multiply-add may round a .5 the other way
    assert interpreter_results["overlay_small"] <= 1


# ----------------------------------------------------------------------------------- accelerate


def test_accelerate_keeps_maps_close_to_fp32_and_finds_the_layer():
    model = tiny_cnn()
    x = torch.randn(4, 3, 16, 16)
    reference = camkit.explain(model, x, "gradcam")
    fast = camkit.explain(accelerate(model, channels_last=True), x, "gradcam", targets=reference.targets)
    assert fast.layer == "model." + reference.layer
    torch.testing.assert_close(fast.maps, reference.maps, atol=1e-4, rtol=0)
    half = camkit.explain(accelerate(model, dtype="bf16"), x, "cam", targets=reference.targets)
    cam = camkit.explain(model, x, "cam", targets=reference.targets)
    assert half.maps.shape == cam.maps.shape
    assert (half.maps.float() - cam.maps).abs().max() < 0.1  # bf16 keeps 8 bits of mantissa
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_autocast_dtype_names():
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    assert autocast_dtype("fp32") is None and autocast_dtype(None) is None
    with pytest.raises(ValueError, match="unknown dtype 'int8'.*bf16"):
        autocast_dtype("int8")


# ----------------------------------------------------------------------------------- GPU parity


@pytest.fixture
def no_tf32(monkeypatch):
    """Full fp32 convolutions and matmuls on the GPU: cuDNN uses TF32 (10-bit mantissa) for fp32
    convolutions by default on Ampere and later, which moves maps by ~1e-3, not a kernel error."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["cam", "gradcam", "layercam", "scorecam"])
@pytest.mark.parametrize("use_triton", [False, True])
def test_cuda_kernel_explain_matches_cpu(method, use_triton, monkeypatch, no_tf32):
    monkeypatch.setenv("CAMKIT_TRITON", "1" if use_triton else "0")
    model = tiny_cnn()
    x = torch.randn(3, 3, 20, 20)
    cpu = camkit.explain(model, x, method)
    assert isinstance(select_kernel(torch.zeros(1, device="cuda")), CudaKernel)
    gpu = camkit.explain(model.cuda(), x.cuda(), method, targets=cpu.targets.cuda())
    assert gpu.maps.device.type == "cuda"
    torch.testing.assert_close(gpu.maps.cpu(), cpu.maps, atol=2e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_kernel_ops_match_torch_kernel(dtype):
    maps = torch.randn(4, 3, 7, 7)
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    expected = TorchKernel().resample_normalize(maps, {2: 224, 3: 224}, 2, relu=True)
    for use_triton in (False, True):
        kernel = CudaKernel(use_triton=use_triton)
        out = kernel.resample_normalize(maps.to("cuda", dtype), {2: 224, 3: 224}, 2, relu=True)
        assert out.dtype == dtype
        assert (out.float().cpu() - expected).abs().max() <= tolerance
        normalized = kernel.normalize(maps.to("cuda", dtype), 2)
        assert (normalized.float().cpu() - TorchKernel().normalize(maps.to(dtype), 2).float()).abs().max() <= tolerance


@pytest.mark.gpu
def test_cuda_overlay_matches_cpu():
    images = torch.randint(0, 256, (3, 3, 50, 60), dtype=torch.uint8)
    maps = torch.rand(3, 50, 60)
    expected = jet_overlay_torch(images, maps, 0.5)
    for use_triton in (False, True):
        out = CudaKernel(use_triton=use_triton).overlay(images.cuda(), maps.cuda(), 0.5)
        assert (out.cpu().int() - expected.int()).abs().max() <= 1


@pytest.mark.gpu
def test_triton_kernels_index_past_2_31_elements():
    """Offsets beyond int32 (compiled Triton, not the interpreter): outputs of more than 2**31
    elements, checked on their last rows against the torch path on those rows alone."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip(f"needs 24 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    kernel = CudaKernel(use_triton=True)
    rows = 2**31 // (224 * 224) + 8  # (rows, 224, 224) bf16 maps: just past 2**31 elements
    small = torch.randn(rows, 7, 7, device="cuda", dtype=torch.bfloat16)
    out = kernel.resample_normalize(small, {1: 224, 2: 224}, 1, relu=True)
    assert out.numel() > 2**31
    tail = TorchKernel().resample_normalize(small[-4:], {1: 224, 2: 224}, 1, relu=True)
    assert (out[-4:].float() - tail.float()).abs().max() <= 1.6e-2
    normalized = kernel.normalize(out, 1)  # rows of 224 * 224 past 2**31 elements, read and written
    assert (normalized[-4:].float() - TorchKernel().normalize(out[-4:], 1).float()).abs().max() <= 1.6e-2
    del small, out, normalized
    n = 2**31 // (3 * 224 * 224) + 2  # uint8 images past 2**31 bytes
    images = torch.randint(0, 256, (n, 3, 224, 224), dtype=torch.uint8, device="cuda")
    maps = torch.rand(n, 224, 224, device="cuda")
    blended = kernel.overlay(images, maps, 0.5)
    expected = jet_overlay_torch(images[-2:], maps[-2:], 0.5)
    assert (blended[-2:].int() - expected.int()).abs().max() <= 1
