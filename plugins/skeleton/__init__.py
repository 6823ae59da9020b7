"""camkit plugin: skeletons. ST-GCN and RA-GCN models per modality and their late-fusion ensembles,
joint-by-time CAMs, NTU / pyskl / CTR-GCN / ST-GCN / Kinetics-JSON / generated data, joint-time and
skeleton renderers, and the ``train / explain / eval / ensemble skeleton`` commands.

Importing this module does not import torch: every hook imports its modules when called.
"""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl


@hookimpl
def camkit_register_models() -> dict[str, Any]:
    from camkit_plugins.skeleton.models import build_ensemble, build_ragcn, build_stgcn

    return {"stgcn": build_stgcn, "ragcn": build_ragcn, "skeleton-ensemble": build_ensemble}


@hookimpl
def camkit_register_model_families() -> dict[str, Any]:
    from camkit_plugins.skeleton.models import SkeletonFamily

    return {"stgcn": SkeletonFamily()}


@hookimpl
def camkit_register_datasets() -> dict[str, Any]:
    from camkit_plugins.skeleton.data import build_ntu_skeleton, build_skeleton_npy, build_skeleton_synthetic
    from camkit_plugins.skeleton.formats import build_ctrgcn, build_kinetics_json, build_pyskl

    return {"skeleton-synthetic": build_skeleton_synthetic, "ntu-skeleton": build_ntu_skeleton,
            "stgcn-npy": build_skeleton_npy, "skeleton-npy": build_skeleton_npy, "pyskl": build_pyskl,
            "ctrgcn": build_ctrgcn, "kinetics-json": build_kinetics_json}


@hookimpl
def camkit_register_renderers() -> dict[str, Any]:
    from camkit_plugins.skeleton.render import render_joint_time, render_skeleton

    return {"joint-time": render_joint_time, "skeleton": render_skeleton}


@hookimpl
def camkit_register_commands() -> dict[str, Any]:
    from camkit_plugins.skeleton.commands import COMMANDS

    return COMMANDS
