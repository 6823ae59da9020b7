"""Deep Feature Factorization: the NMF recovers exactly low-rank features; concepts are scored by the
classifier; maps for any layout."""

import pytest
import torch
import torch.nn as nn

from camkit.factorization import deep_feature_factorization, nonnegative_factorization
from tests.methods_models import GapNet


class Passthrough(nn.Module):
    """The input itself is the target layer's output, then GAP + linear."""

    def __init__(self, channels=6, classes=4):
        super().__init__()
        self.body = nn.Identity()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_multiplicative_updates_never_increase_the_error_and_recover_a_low_rank_matrix():
    a = (torch.rand(20, 3) @ torch.rand(3, 200)).double()
    errors = [float((a - w @ h).norm()) for w, h in (nonnegative_factorization(a, 3, i) for i in (1, 10, 50, 400))]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] / float(a.norm()) < 1e-2


def test_concepts_and_maps_reconstruct_features_made_of_two_concepts():
    profiles = torch.rand(6, 2)  # channels x concepts
    presence = torch.rand(3, 2, 5, 5)  # samples x concepts x sites
    x = torch.einsum("ck,nkhw->nchw", profiles, presence)
    net = Passthrough().eval()
    res = deep_feature_factorization(net, x, layer="body", concepts=2, iterations=500, upsample=False, normalize=False)
    assert res.maps.shape == (3, 2, 5, 5) and res.map_letters == "NKHW"
    offset = x.transpose(0, 1).flatten(1).amin(1)
    rebuilt = torch.einsum("kc,nkhw->nchw", res.concepts - offset, res.maps) + offset[:, None, None]
    assert res.loss < 1e-2
    torch.testing.assert_close(rebuilt, x, atol=2e-2, rtol=0)
    torch.testing.assert_close(res.concept_scores, res.concepts @ net.fc.weight.detach().T)
    assert torch.equal(res.concept_classes, res.concept_scores.topk(3, dim=1).indices)


@pytest.mark.parametrize("dims,shape", [(1, (2, 3, 12)), (2, (2, 3, 8, 8)), (3, (2, 3, 4, 6, 6))])
def test_maps_in_1d_2d_3d_are_normalised_and_at_input_size(dims, shape):
    res = deep_feature_factorization(GapNet(dims).eval(), torch.randn(shape), concepts=3, iterations=50)
    assert res.maps.shape == (2, 3, *shape[2:]) and torch.isfinite(res.maps).all()
    assert res.maps.amin() >= 0 and res.maps.amax() <= 1


def test_bad_concept_count_is_a_clear_error():
    with pytest.raises(ValueError, match="concepts"):
        deep_feature_factorization(GapNet(2).eval(), torch.randn(1, 3, 8, 8), concepts=0)
