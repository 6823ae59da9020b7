"""The explorer's page (Gradio): widgets wired to ``Explorer``, served offline on 127.0.0.1.

Gradio serves its own compiled frontend from the wheel (no CDN); the only outside asset of its default theme,
the Google fonts, is replaced by the system's fonts, and analytics are off. Files: Gradio serves only what the
app itself hands out (the overlays and downloads it writes) and its upload cache; examples are offered by
name and read on the server, so no path of the machine is ever asked of the page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from camkit_plugins.app.explorer import DELETION_STEPS, PICTURE_SUFFIXES, Explorer, Loaded, PictureError

DEFAULT_METHODS = ("gradcam",)
MAX_UPLOAD_MB = 10.0
MAX_CLIPS = 32


def _gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, before gradio is imported
    from camkit_plugins.image.pretrained import require_module

    return require_module("gradio", "gradio", "camkit app (pip install 'camkit[app]')")


def offline_theme() -> Any:
    """Gradio's default theme with the system's fonts instead of Google's (fetched from a CDN otherwise)."""
    gr = _gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def build_app(explorer: Explorer, examples: Sequence[str | Path] = (), clips: Sequence[Any] = ()) -> Any:
    """The page as ``gr.Blocks``: pictures (``examples`` offered by file name, or uploads) for an image model,
    ``clips`` (``(C, T, V, M)`` arrays) for a skeleton checkpoint."""
    gr = _gradio()
    from camkit.plugin_manager import registry

    examples = {Path(path).name: Path(path) for path in examples}
    methods = list(registry("methods"))
    with gr.Blocks(title="camkit explorer", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## camkit explorer: {explorer.config.get('model', 'model')} "
                    f"({len(explorer.classes)} classes)")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                if explorer.skeleton:
                    source = gr.Dropdown([(f"clip {i}", i) for i in range(len(clips))], value=None, label="Clip")
                    upload = None
                else:
                    upload = gr.UploadButton("Upload a picture", file_types=list(PICTURE_SUFFIXES), type="filepath",
                                             elem_id="upload")  # a button: always ready for the next one
                    source = gr.Dropdown(list(examples), value=None, label="or pick an example",
                                         visible=bool(examples), elem_id="examples")
                chosen = gr.CheckboxGroup(methods, value=list(DEFAULT_METHODS), label="Methods (side by side)",
                                          elem_id="methods")
                layer = gr.Dropdown([], value=None, label="Layer (located first)", allow_custom_value=False,
                                    elem_id="layer")
                target = gr.Dropdown([], value=None, label="Class (top 5)", elem_id="class")
                alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Overlay opacity", elem_id="alpha")
                deletion = gr.Checkbox(False, label=f"Deletion AUC (faithfulness; {DELETION_STEPS + 1} extra forward "
                                       f"passes per method)", visible=not explorer.skeleton, elem_id="deletion")
            with gr.Column(scale=2):
                gallery = gr.Gallery(label="Maps", columns=3, height=380, object_fit="contain", preview=False,
                                     elem_id="maps")
                info = gr.Markdown("", elem_id="info")
                files = gr.File(label="Downloads: raw maps (.npy) and pictures", file_count="multiple",
                                interactive=False, elem_id="downloads")

        controls = [chosen, layer, target, alpha, deletion]
        shown = [gallery, info, files]

        def render(loaded: Loaded | None, methods: list[str], layer_name: str | None, class_id: int | None,
                   opacity: float, with_deletion: bool) -> tuple[Any, str, list[str]]:
            if loaded is None:
                return [], "", []
            try:
                panels = explorer.panels(loaded, methods, layer_name, class_id, opacity, with_deletion)
            except (ValueError, RuntimeError, TypeError) as exc:  # a method that does not apply: say why
                raise gr.Error(f"{type(exc).__name__}: {exc}", print_exception=False) from None
            lines = [f"**{loaded.name}**, layer `{layer_name}`"]
            lines += [f"- {panel.caption}" + ("" if panel.deletion_auc is None else
                                              f", deletion AUC {panel.deletion_auc:.3f} (lower is better)")
                      for panel in panels]
            written = [str(path) for path in explorer.downloads(loaded, panels)]  # (.npy, .jpg) per panel
            shown = [(picture, panel.caption) for picture, panel in zip(written[1::2], panels)]
            return shown, "\n".join(lines), written

        def load(loaded: Loaded, methods: list[str], opacity: float, with_deletion: bool) -> tuple[Any, ...]:
            methods = methods or list(DEFAULT_METHODS)
            layers = explorer.layers(loaded)
            try:
                explorer.explain(loaded, methods[0], layers[0], None)  # the predicted class, and the top 5
            except (ValueError, RuntimeError, TypeError) as exc:
                raise gr.Error(f"{type(exc).__name__}: {exc}", print_exception=False) from None
            class_id = loaded.top[0][0]
            return (loaded, gr.update(choices=layers, value=layers[0]),
                    gr.update(choices=explorer.class_choices(loaded), value=class_id), methods,
                    *render(loaded, methods, layers[0], class_id, opacity, with_deletion))

        def from_upload(path: str | None, methods: list[str], opacity: float, with_deletion: bool) -> tuple[Any, ...]:
            if path is None:
                raise gr.Error("no picture received", print_exception=False)
            try:
                loaded = explorer.read_picture(path)
            except PictureError as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            return load(loaded, methods, opacity, with_deletion)

        def from_source(name: Any, methods: list[str], opacity: float, with_deletion: bool) -> tuple[Any, ...]:
            if explorer.skeleton:
                loaded = explorer.load_clip(clips[int(name)], f"clip {int(name)}")
            elif name in examples:  # only the files named on the command line
                try:
                    loaded = explorer.read_picture(examples[name])
                except PictureError as exc:
                    raise gr.Error(str(exc), print_exception=False) from None
            else:
                raise gr.Error(f"{name!r} is not one of the examples", print_exception=False)
            return load(loaded, methods, opacity, with_deletion)

        loaded_outputs = [state, layer, target, chosen, *shown]
        if upload is not None:
            upload.upload(from_upload, [upload, chosen, alpha, deletion], loaded_outputs)
        source.input(from_source, [source, chosen, alpha, deletion], loaded_outputs)
        for control in (chosen, layer, target, deletion):
            control.input(render, [state, *controls], shown)
        alpha.release(render, [state, *controls], shown)
    return app


def launch(app: Any, host: str = "127.0.0.1", port: int | None = None, max_upload_mb: float = MAX_UPLOAD_MB,
           block: bool = True) -> Any:
    """Serve ``app`` on ``host:port`` (a free port from 7860 when None), uploads up to ``max_upload_mb``."""
    if max_upload_mb <= 0:
        raise ValueError(f"--max-upload-mb {max_upload_mb}: a positive size in megabytes")
    return app.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024), share=False,
                      inbrowser=False, prevent_thread_lock=not block, show_error=True, quiet=not block,
                      theme=offline_theme(), footer_links=[], ssr_mode=False, enable_monitoring=False)
