"""``KEY=VALUE`` options of the skeleton commands, checked against what the receiving function accepts.

A misspelt name or a value of the wrong kind (``-m mask_rul=joints``, ``-d frames=abc``) is one
``ValueError`` naming the option and what was expected, before anything is built or trained.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Iterable

from camkit.plugin_manager import UnknownNameError

_KINDS = {"bool": bool, "int": int, "float": float, "str": str}


def parse_key_values(pairs: Iterable[str] | None, flag: str) -> dict[str, Any]:
    """``["size=64", "root=/data"]`` -> ``{"size": 64, "root": "/data"}``: values are read as JSON when
    they parse (numbers, ``true``, lists), else kept as text; ``-`` in keys becomes ``_``."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {pair!r} is not KEY=VALUE")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def accepted_options(functions: Iterable[Callable[..., Any]], skip: Iterable[str] = ()) -> dict[str, type | None]:
    """Keyword options the functions accept, each with the kind of value expected (``None``: any)."""
    accepted: dict[str, type | None] = {}
    for function in functions:
        for name, parameter in inspect.signature(function).parameters.items():
            if name in skip or name == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                continue
            accepted.setdefault(name, _kind(parameter))
    return accepted


def _kind(parameter: inspect.Parameter) -> type | None:
    """The kind the annotation names (``int``, ``str | None`` ...; anything richer, e.g. ``Any``:
    ``None``), else the default value's kind."""
    annotation = parameter.annotation
    if annotation is not inspect.Parameter.empty:
        names = [part.strip() for part in str(getattr(annotation, "__name__", annotation)).split("|")]
        named = [name for name in names if name != "None"]
        return _KINDS.get(named[0]) if len(named) == 1 else None
    default = parameter.default
    return type(default) if type(default) in _KINDS.values() else None


def check_options(options: dict[str, Any], accepted: dict[str, type | None], what: str) -> dict[str, Any]:
    """``options`` with numbers given for text options turned back into text; an unknown name is an
    ``UnknownNameError`` (a ``ValueError``) listing close matches and what ``what`` accepts, a value of
    the wrong kind a ``ValueError`` naming it."""
    checked = dict(options)
    for name, value in options.items():
        if name not in accepted:
            raise UnknownNameError.of(f"{what} option", name, sorted(accepted))
        kind = accepted[name]
        if kind is None or value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            checked[name] = json.dumps(value)  # a folder or split named "2024" parses as a number
            continue
        raise ValueError(f"{what} option {name}={json.dumps(value) if not isinstance(value, str) else value} "
                         f"must be {_KIND_WORDS[kind]}")
    return checked


_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
