"""camkit plugin: the explorer app, ``camkit app --model SPEC | --checkpoint DIR`` (``pip install 'camkit[app]'``).

A local web page (Gradio, offline, on 127.0.0.1) to upload or pick pictures and compare methods, layers and
classes on them, or to pick skeleton clips. Importing this package imports neither torch nor gradio."""

from __future__ import annotations

from typing import Any

from camkit.hookspecs import hookimpl


@hookimpl
def camkit_register_commands() -> dict[str, Any]:
    from camkit.cli import Command
    from camkit_plugins.app.command import add_arguments, run

    return {"app": Command("a local web page to explore the maps of a model on pictures or skeleton clips",
                           add_arguments, run)}
