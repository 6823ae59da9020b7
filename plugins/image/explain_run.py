"""The state of a `camkit explain` run in its ``--out`` folder, so a rerun finishes what a killed run left.

- ``explain-run.json``: the settings that decide the outputs; a rerun with other settings is an error
  (``restart=True`` starts over).
- ``.explain-journal/rank-<r>.jsonl``: one line per image, appended by its rank once every file of that
  image has been written (each file by an atomic rename), so a kill at any point loses nothing already
  written and the next run skips exactly those images. A line torn by the kill is ignored.
- ``.explain-journal/done.jsonl``: the journals folded into one file at the end of a run.
- ``manifest.jsonl`` (or ``manifest.csv``): rank 0 writes one row per image in input order: file, label,
  predicted class, probability, target, and the paths of the map, overlay, raw map and mask (relative
  to ``--out``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

SETTINGS_FILE = "explain-run.json"
JOURNAL_FOLDER = ".explain-journal"
DONE_FILE = "done.jsonl"
MANIFEST_FORMATS = ("jsonl", "csv")
MANIFEST_COLUMNS = ("file", "label", "predicted", "probability", "target", "map", "overlay", "raw_map", "mask")
OUTPUT_KEYS = ("map", "overlay", "raw_map", "mask", "panel")  # the files a record names


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a journal whose process was killed mid-write
            continue
    return records


class RunFolder:
    """The run state of ``out`` for ``settings`` (a JSON-able dict of what decides the outputs)."""

    def __init__(self, out: Path, settings: Mapping[str, Any], rank: int = 0) -> None:
        self.out, self.settings, self.rank = Path(out), dict(settings), rank
        self.journal_folder = self.out / JOURNAL_FOLDER

    def check_settings(self, restart: bool = False, require_previous: bool = False) -> None:
        """Refuse a rerun with other settings (naming them); write the settings (rank 0) for the next run."""
        from camkit.io import write_json_atomic

        path = self.out / SETTINGS_FILE
        if path.is_file() and not restart:
            recorded = json.loads(path.read_text())
            differing = [f"{name} {self.settings.get(name)!r} (the run there has {recorded.get(name)!r})"
                         for name in sorted(set(recorded) | set(self.settings))
                         if recorded.get(name) != self.settings.get(name)]
            if differing:
                raise ValueError(f"--out {self.out} holds a camkit explain run with other settings: "
                                 f"{'; '.join(differing)}. Use another --out, the same settings to finish it, "
                                 "or --restart to redo it")
        elif require_previous and not path.is_file():
            raise ValueError(f"--resume: {self.out} holds no camkit explain run ({SETTINGS_FILE} is missing)")
        if self.rank == 0:
            write_json_atomic(path, self.settings)

    def remove_temporaries(self) -> list[Path]:
        """Remove the temporary files (``.<stem>.<random>.tmp<suffix>``, `camkit.io.atomic_path`'s) that a
        killed run left half-written; returns them."""
        found = [path for path in self.out.glob(".*.tmp*") if path.is_file()]
        for path in found:
            path.unlink()
        return found

    def completed(self, restart: bool = False) -> dict[str, dict[str, Any]]:
        """The records of images finished by earlier runs (by name), each with every file it names present."""
        if restart or not self.journal_folder.is_dir():
            return {}
        found: dict[str, dict[str, Any]] = {}
        done = self.journal_folder / DONE_FILE
        paths = ([done] if done.is_file() else []) + sorted(self.journal_folder.glob("rank-*.jsonl"))
        for path in paths:
            for record in _read_jsonl(path):
                found[record["file"]] = record
        return {name: record for name, record in found.items()
                if all((self.out / record[key]).is_file() for key in OUTPUT_KEYS if record.get(key))}

    def journal(self) -> "Journal":
        self.journal_folder.mkdir(parents=True, exist_ok=True)
        return Journal(self.journal_folder / f"rank-{self.rank}.jsonl")

    def finish(self, records: Iterable[dict[str, Any]], order: Sequence[str], manifest: str = "jsonl") -> Path:
        """Rank 0, after every rank is done: ``records`` folded into ``done.jsonl`` and the manifest written
        in input ``order``; the per-rank journals are removed."""
        from camkit.io import write_text_atomic

        by_name = {record["file"]: record for record in records}
        rows = [by_name[name] for name in order if name in by_name]
        self.journal_folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.journal_folder / DONE_FILE, "".join(json.dumps(row) + "\n" for row in rows))
        for path in self.journal_folder.glob("rank-*.jsonl"):
            path.unlink()
        return write_manifest(self.out, rows, manifest)


class Journal:
    """Append-only lines, one ``os.write`` each on an ``O_APPEND`` file: a kill leaves whole lines and at
    most one torn last line (skipped when read)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, record: Mapping[str, Any]) -> None:
        os.write(self.handle, (json.dumps(record) + "\n").encode())

    def close(self) -> None:
        os.close(self.handle)


def write_manifest(out: Path, rows: Sequence[Mapping[str, Any]], manifest: str = "jsonl") -> Path:
    """``out/manifest.jsonl`` (every field of each record) or ``out/manifest.csv`` (``MANIFEST_COLUMNS``),
    written atomically."""
    import csv
    import io

    from camkit.io import write_text_atomic

    if manifest not in MANIFEST_FORMATS:
        from camkit.plugin_manager import UnknownNameError

        raise UnknownNameError.of("manifest format", manifest, MANIFEST_FORMATS)
    if manifest == "jsonl":
        return write_text_atomic(out / "manifest.jsonl", "".join(json.dumps(dict(row)) + "\n" for row in rows))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: ("" if row.get(key) is None else row.get(key)) for key in MANIFEST_COLUMNS}
                     for row in rows)
    return write_text_atomic(out / "manifest.csv", text.getvalue())


def read_manifest(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a finished run in ``folder`` (from its journal, which keeps every field whatever the
    manifest's format), in input order; an error when there is none."""
    folder = Path(folder)
    done = folder / JOURNAL_FOLDER / DONE_FILE
    if done.is_file():
        return _read_jsonl(done)
    if (folder / "manifest.jsonl").is_file():
        return _read_jsonl(folder / "manifest.jsonl")
    raise FileNotFoundError(f"{folder}: no camkit explain run here (no {JOURNAL_FOLDER}/{DONE_FILE} or "
                            "manifest.jsonl); write one with camkit explain --save-maps --out")
