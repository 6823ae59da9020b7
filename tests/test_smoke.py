import torch
import torchvision

import camkit


def test_cam_equals_gradcam_on_resnet():
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    a = camkit.explain(model, x, method="cam")
    b = camkit.explain(model, x, method="gradcam")
    assert a.maps.shape == (2, 64, 64)
    torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=0)
