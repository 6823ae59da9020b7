"""``index.html``: one self-contained page to look at what a run wrote.

Every overlay with its label, probability and top-k; the raw map on hover (and pinned by a click);
the report's tables and plots. Pictures are relative links to files beside the page, styles and
script are inline, so the page opens from disk with no network. When the page has loaded it writes
``data-images-loaded`` / ``data-images-total`` on ``<body>`` and a line under the title naming any
picture that failed, which is also what the headless-browser test reads.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from camkit.io import write_text_atomic

PAGE_NAME = "index.html"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; }
.card { width: 260px; border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; }
.pictures { position: relative; cursor: pointer; }
.pictures img { width: 100%; display: block; image-rendering: auto; }
.pictures img.raw { position: absolute; top: 0; left: 0; height: 100%; opacity: 0; transition: opacity .15s; }
.pictures:hover img.raw, .pictures.pinned img.raw { opacity: 1; }
.label { font-weight: bold; margin: 4px 0; } .note { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .6em 0; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #eee; } .topk td:last-child, td.number { text-align: right; }
img.figure { max-width: 100%; border: 1px solid #ddd; margin: 4px 0; }
#status.bad { color: #b00; font-weight: bold; }
"""

# Counts the pictures that loaded (naturalWidth > 0 once complete) when the page's load event fires.
_SCRIPT = """
document.querySelectorAll('.pictures').forEach(function (box) {
  box.addEventListener('click', function () { box.classList.toggle('pinned'); });
});
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.length - broken.length;
  var status = document.getElementById('status');
  if (broken.length) {
    status.className = 'bad';
    status.textContent = broken.length + ' of ' + images.length + ' pictures did not load: ' +
      broken.map(function (img) { return img.getAttribute('src'); }).join(', ');
  } else {
    status.textContent = 'all ' + images.length + ' pictures loaded';
  }
});
"""


@dataclass
class Card:
    """One explained picture: ``overlay`` and ``raw_map`` are paths relative to the page."""

    title: str
    overlay: str
    label: str
    probability: float
    raw_map: str | None = None
    topk: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""
    extra: str | None = None  # e.g. a top-k panel, linked under the card


@dataclass
class Section:
    """A heading with, in order: paragraphs, tables (header row + rows), figures and cards."""

    heading: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = field(default_factory=list)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, caption)
    cards: list[Card] = field(default_factory=list)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _card(card: Card) -> str:
    raw = (f'<img class="raw" src="{_e(card.raw_map)}" alt="raw map of {_e(card.title)}">'
           if card.raw_map else "")
    rows = "".join(f"<tr><td>{_e(name)}</td><td>{100 * p:.2f}%</td></tr>" for name, p in card.topk)
    topk = f'<table class="topk"><tr><th>top-{len(card.topk)}</th><th>p</th></tr>{rows}</table>' if rows else ""
    extra = f'<div class="note"><a href="{_e(card.extra)}">top-k panel</a></div>' if card.extra else ""
    hint = "hover or click: raw map" if card.raw_map else ""
    return (f'<div class="card"><div class="pictures" title="{_e(hint)}"><img src="{_e(card.overlay)}" '
            f'alt="{_e(card.title)}">{raw}</div><div class="label">{_e(card.label)} {100 * card.probability:.2f}%'
            f'</div><div class="note">{_e(card.title)}{" - " + _e(card.note) if card.note else ""}</div>'
            f'{topk}{extra}</div>')


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_page(title: str, sections: Sequence[Section], intro: str = "") -> str:
    """The page's HTML text (no external resource: styles and script inline, pictures relative)."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>",
             '<p id="status">loading pictures...</p>']
    if intro:
        parts.append(f"<p>{_e(intro)}</p>")
    for section in sections:
        parts.append(f"<h2>{_e(section.heading)}</h2>")
        parts += [f"<p>{_e(text)}</p>" for text in section.paragraphs]
        parts += [_table(header, rows) for header, rows in section.tables]
        parts += [f'<figure><img class="figure" src="{_e(path)}" alt="{_e(caption)}"><figcaption class="note">'
                  f"{_e(caption)}</figcaption></figure>" for path, caption in section.figures]
        if section.cards:
            parts.append('<div class="cards">' + "".join(_card(card) for card in section.cards) + "</div>")
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_page(folder: str | Path, title: str, sections: Sequence[Section], intro: str = "") -> Path:
    """Write ``folder/index.html`` atomically; every picture it names must be relative to ``folder``."""
    folder = Path(folder)
    for section in sections:
        paths = [path for path, _ in section.figures]
        paths += [p for card in section.cards for p in (card.overlay, card.raw_map, card.extra) if p]
        for path in paths:
            if Path(path).is_absolute() or "://" in path:
                raise ValueError(f"index.html links pictures relative to its folder; got {path!r}")
    return write_text_atomic(folder / PAGE_NAME, render_page(title, sections, intro))


def write_raw_map(path: str | Path, raw_map: Any) -> Path:
    """A map ``(H, W)`` in [0, 1] as a JET PNG (no picture under it), written atomically."""
    import cv2
    import numpy as np

    from camkit.io import atomic_path
    from camkit_plugins.image.render import jet_lut

    values = raw_map.detach().float().cpu().clamp(0, 1) if hasattr(raw_map, "detach") else raw_map
    index = (np.asarray(values, dtype=np.float32) * 255.0 + 0.5).astype(np.int64)
    rgb = jet_lut("cpu").numpy()[index].round().clip(0, 255).astype(np.uint8)
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{path}: could not write the raw map")
    return Path(path)
