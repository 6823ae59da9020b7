"""Every option list of the bench, skeleton and gpu plugins answers an unknown name as the registries
do: an ``UnknownNameError`` (a ``KeyError`` and a ``ValueError``) suggesting the close matches and
listing what exists."""

from __future__ import annotations

import pytest
import torch

from camkit.plugin_manager import UnknownNameError


def _bench_setting():
    from camkit_plugins.bench.config import normalize_config

    normalize_config({"sample": 3})


def _bench_entry_key():
    from camkit_plugins.bench.config import normalize_config

    normalize_config({"metrics": [{"name": "deletion", "lable": "d"}]})


def _graph():
    from camkit_plugins.skeleton.graph import get_graph

    get_graph("ntu52")


def _partition():
    from camkit_plugins.skeleton.graph import NTU25

    NTU25.adjacency("spatail")


def _mask_rule():
    from camkit_plugins.skeleton.masking import MaskRule

    MaskRule("treshold")


def _mask_direction():
    from camkit_plugins.skeleton.masking import MaskRule

    MaskRule("threshold", 0.5, "kep")


def _sampling():
    from camkit_plugins.skeleton.preprocess import ClipPipeline

    ClipPipeline(frames=5, sampling="uniformm")


def _test_sampling():
    from camkit_plugins.skeleton.preprocess import ClipPipeline

    ClipPipeline(frames=5, test_sampling="center")


def _modality():
    from camkit_plugins.skeleton.modalities import check_modality

    check_modality("bones")


def _split():
    from camkit_plugins.skeleton.data import build_skeleton_synthetic

    build_skeleton_synthetic(split="tset")


def _ntu_protocol():
    from camkit_plugins.skeleton.data import _split_files

    _split_files([], "train", "xsb", seed=0, val_fraction=0.1)


def _cue():
    from camkit_plugins.skeleton.data import _cue, rest_pose

    _cue("nodd", rest_pose())


def _stgcn_config():
    from camkit_plugins.skeleton.models import STGCN

    STGCN(3, config="tinny")


def _mask_option():
    from camkit_plugins.skeleton.models import RAGCN

    RAGCN(3, streams=1, config="tiny").set_mask_options(mask_rul="joints")


def _ensemble_member():
    from camkit_plugins.skeleton.models import ModalityEnsemble

    ModalityEnsemble(3, [{"model": "stgnc"}], [1.0])


def _jitter():
    from camkit_plugins.skeleton.protocols import jitter

    jitter(torch.zeros(1, 3, 4, 25, 1), "frames", 0.1, 0.1, torch.Generator())


def _command_option():
    from camkit_plugins.skeleton.options import check_options

    check_options({"frame": 3}, {"frames": int, "graph": None}, "dataset d")


def _box_rule():
    from camkit_plugins.image.boxes import boxes_from_maps

    boxes_from_maps(torch.ones(1, 4, 4), rule="max_fractoin")


def _resnet():
    from camkit_plugins.image.models import build_resnet

    build_resnet("resnet81", 2)


def _shape():
    from camkit_plugins.image.datasets import _shape_polygon

    _shape_polygon("sqaure", 3.0, 0.0)


def _baseline():
    from camkit_plugins.metrics.baselines import baseline_maps

    baseline_maps("centre", torch.zeros(1, 4, 4), "HW", None, 0)


def _dtype():
    from camkit_plugins.gpu.accelerate import autocast_dtype

    autocast_dtype("bf61")


CASES = [
    (_bench_setting, "unknown bench setting 'sample'. Did you mean 'samples'? Available: batch_size, chunk_size,"),
    (_bench_entry_key, "metric entry {'name': 'deletion', 'lable': 'd'}: unknown key 'lable'. Did you mean 'label'? "
                       "Available: name, options, label"),
    (_graph, "unknown skeleton graph 'ntu52'. Did you mean 'ntu25'? Available: coco17, ntu25, openpose18, or a dict "
             "with joints, bones, center"),
    (_partition, "unknown partition 'spatail'. Did you mean 'spatial'? Available: uniform, distance, spatial"),
    (_mask_rule, "unknown mask rule 'treshold'. Did you mean 'threshold'? "
                 "Available: threshold, topk, quantile, joints"),
    (_mask_direction, "unknown mask direction 'kep'. Did you mean 'keep'? Available: mask, keep"),
    (_sampling, "unknown sampling 'uniformm'. Did you mean 'uniform'? Available: uniform, crop-resize"),
    (_test_sampling, "unknown test_sampling 'center'. Did you mean 'centre'? Available: centre, uniform"),
    (_modality, "unknown modality 'bones'. Did you mean 'bone'? Available: joint, bone, joint-motion, bone-motion"),
    (_split, "unknown split 'tset'. Did you mean 'test'? Available: train, val, test"),
    (_ntu_protocol, "unknown NTU protocol 'xsb'. Did you mean 'xsub'? Available: xsub, xview, xset, random, all"),
    (_cue, "unknown cue 'nodd'. Did you mean 'nod'? Available: left wave, nod, right wave,"),
    (_stgcn_config, "unknown ST-GCN config 'tinny'. Did you mean 'tiny'? Available: paper, small, tiny"),
    (_mask_option, "unknown mask option 'mask_rul'. Did you mean 'mask_rule'"),
    (_ensemble_member, "unknown ensemble member model 'stgnc'. Did you mean 'stgcn'? Available: stgcn, ragcn"),
    (_jitter, "unknown jitter 'frames'. Did you mean 'frame'? Available: joint, frame, occlusion"),
    (_command_option, "unknown dataset d option 'frame'. Did you mean 'frames'? Available: frames, graph"),
    (_box_rule, "unknown box rule 'max_fractoin'. Did you mean 'max_fraction'? Available: max_fraction, percentile"),
    (_resnet, "unknown ResNet 'resnet81'. Did you mean 'resnet18', 'resnet152', 'resnet101'? Available: resnet18,"),
    (_shape, "unknown shape 'sqaure'. Did you mean 'square', 'star'? Available: circle, square,"),
    (_baseline, "unknown baseline 'centre'. Did you mean 'center'? Available: center, random"),
    (_dtype, "unknown dtype 'bf61'. Did you mean 'bf16'? Available: bf16, bfloat16, float16, float32, fp16, fp32"),
]


@pytest.mark.parametrize("call, message", CASES, ids=[call.__name__.strip("_") for call, _ in CASES])
def test_an_unknown_option_name_suggests_the_close_ones(call, message):
    with pytest.raises(UnknownNameError) as caught:
        call()
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)  # one line through the CLI
