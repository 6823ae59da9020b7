"""Atomic writes: a file is either the old one or the new one, never half of each.

Every result camkit writes (checkpoints, maps, overlays, reports, bench cells) goes through
:func:`atomic_path`: the writer fills a temporary file in the same folder, which is renamed over the
target only when the writer finished without an exception (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import: mkstemp creates 0600 files, results should get the usual mode


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    >>> with atomic_path("maps.npy") as tmp:
    ...     numpy.save(tmp, maps)          # a kill here leaves the old maps.npy untouched
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"{target}: is a folder, cannot write a file there")
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    # Keep the suffix: some writers (numpy, cv2, PIL) pick the format from it.
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=parent)
    os.close(handle)
    temporary = Path(name)
    os.chmod(temporary, 0o666 & ~_UMASK)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """``write(temporary_path)`` then rename over ``path``; returns ``Path(path)``."""
    with atomic_path(path) as temporary:
        write(temporary)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return write_atomic(path, lambda temporary: temporary.write_text(text))


def write_json_atomic(path: str | os.PathLike[str], data: Any, **dumps: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, **{"indent": 2, **dumps}))


def save_numpy_atomic(path: str | os.PathLike[str], array: Any) -> Path:
    import numpy as np

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as file:  # a file object: np.save would append ".npy" to a name
            np.save(file, array)

    return write_atomic(path, write)


def save_torch_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    import torch

    return write_atomic(path, lambda temporary: torch.save(obj, temporary))


def output_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """The folder results go to, created with its parents, after checking that files can be written in it.

    One clear error before any work is done, instead of a traceback after it: ``NotADirectoryError`` when
    ``path`` (or a folder above it) is a file, ``PermissionError`` when the folder cannot be created or
    written in (read-only folder or file system). ``option`` names the setting in the messages."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{option} {folder}: is a file, not a folder; name a folder "
                                 "(it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        blocking = next((parent for parent in folder.parents if parent.is_file()), exc.filename)
        raise NotADirectoryError(f"{option} {folder}: cannot create the folder, {blocking} is a file") from exc
    except OSError as exc:
        raise PermissionError(f"{option} {folder}: cannot create the folder: {exc.strerror}") from exc
    try:
        handle, probe = tempfile.mkstemp(prefix=".camkit-write-test.", dir=folder)
    except OSError as exc:
        raise PermissionError(f"{option} {folder}: cannot write in this folder: {exc.strerror}") from exc
    os.close(handle)
    os.unlink(probe)
    return folder
