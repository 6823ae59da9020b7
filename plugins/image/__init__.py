"""camkit plugin: images. ResNets and the MNIST GAP CNN, their model families, the digits /
shapes / MNIST / picture-folder datasets, overlay and grid renderers, and the ``train image``,
``explain`` and ``demo`` commands.

Importing this package does not import torch: every hook imports its module when called.
"""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl


@hookimpl
def camkit_register_models() -> dict[str, Any]:
    from camkit_plugins.image.models import model_builders

    return model_builders()


@hookimpl
def camkit_register_datasets() -> dict[str, Any]:
    from camkit_plugins.image.datasets import (
        build_digits,
        build_image_folder,
        build_mnist,
        build_mnist_subset,
        build_shapes,
    )

    return {"digits": build_digits, "shapes": build_shapes, "mnist": build_mnist, "mnist-5k": build_mnist_subset,
            "image-folder": build_image_folder}


@hookimpl
def camkit_register_renderers() -> dict[str, Any]:
    from camkit_plugins.image.render import overlay, save_grid

    return {"overlay": overlay, "grid": save_grid}


@hookimpl
def camkit_register_commands() -> dict[str, Any]:
    from camkit_plugins.image.commands import command_table

    return command_table()


@hookimpl
def camkit_register_model_families() -> dict[str, Any]:
    from camkit_plugins.image.ultralytics_support import UltralyticsFamily

    return {"ultralytics": UltralyticsFamily()}
